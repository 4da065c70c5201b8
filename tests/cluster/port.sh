# port.sh, sourced by the shell tests that start members: port prints a free loopback port below
# the kernel's ephemeral range, so no outgoing connection can take it before the member binds it
# (a freed ephemeral port can; tests/cluster/harness.c hc_free_port is the C twin). Falls back to
# any free port when the range starts too low to leave room below it.
port() { python3 -c '
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000 if lo > 11000 else 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, lo)))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
'; }
