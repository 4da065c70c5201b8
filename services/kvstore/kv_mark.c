/* kv_mark.c: the store's durability marker, kv.state (see kv_store.h "Durability").
 *
 * The store commits without fdatasync and syncs in the background, so after the *machine*
 * crashes its file may hold a torn mix of transactions (LMDB keeps integrity without syncs only
 * on file systems that keep write order; ext4 does not promise that). A process crash is
 * harmless: the kernel's page cache still holds every write, in order. kv.state tells the two
 * apart: it says "dirty since boot <id>" while the store may hold unsynced writes and "clean"
 * after a final sync; a dirty mark from another boot means the machine went down under us. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "services/kvstore/kv_internal.h"

#define MARK_FILE "kv.state"
#define MARK_MAGIC "craft-kv-state 1"

int kv_boot_id(char *buf, size_t len)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f)
        return -1;
    bool ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    if (!ok)
        return -1;
    buf[strcspn(buf, "\n")] = 0;
    return buf[0] ? 0 : -1;
}

enum kv_mark kv_mark_read(const char *dir, char *boot, size_t len)
{
    char path[4096], text[256];
    snprintf(path, sizeof path, "%s/" MARK_FILE, dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? KV_MARK_NONE : KV_MARK_BAD;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        return KV_MARK_BAD;
    text[n] = 0;
    /* "craft-kv-state 1\nclean\n" or "craft-kv-state 1\ndirty <boot id>\n", nothing else. */
    char state[16], id[80];
    int end = -1;
    if (sscanf(text, MARK_MAGIC "\n%15s%n", state, &end) != 1 || end < 0)
        return KV_MARK_BAD;
    if (!strcmp(state, "clean") && !strcmp(text + end, "\n"))
        return KV_MARK_CLEAN;
    int end2 = -1;
    if (strcmp(state, "dirty") || sscanf(text + end, " %79s%n", id, &end2) != 1 || end2 < 0 ||
        strcmp(text + end + end2, "\n") || strlen(id) >= len)
        return KV_MARK_BAD;
    strcpy(boot, id);
    return KV_MARK_DIRTY;
}

int kv_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = fsync(fd) ? errno : 0;
    close(fd);
    return rc;
}

int kv_mark_write(const char *dir, const char *boot)
{
    char path[4096], tmp[4096], text[160];
    snprintf(path, sizeof path, "%s/" MARK_FILE, dir);
    snprintf(tmp, sizeof tmp, "%s/" MARK_FILE ".tmp", dir);
    int len = boot ? snprintf(text, sizeof text, MARK_MAGIC "\ndirty %s\n", boot)
                   : snprintf(text, sizeof text, MARK_MAGIC "\nclean\n");
    if (len < 0 || (size_t)len >= sizeof text)
        return EINVAL;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno;
    int rc = 0;
    if (write(fd, text, (size_t)len) != len)
        rc = errno ? errno : EIO;
    else if (fdatasync(fd))
        rc = errno;
    close(fd);
    /* rename + directory fsync: the mark on disk is the old one or the new one, whole. */
    if (rc == 0 && rename(tmp, path))
        rc = errno;
    if (rc == 0)
        rc = kv_sync_dir(dir);
    if (rc)
        unlink(tmp);
    return rc;
}
