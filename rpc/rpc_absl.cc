// Debian builds abseil without NDEBUG, so every absl::Mutex that gRPC takes runs abseil's
// deadlock detector: a global graph of lock ids updated under a spin lock, with a stack trace
// taken whenever a lock is taken while another is held. That cost about 10% of a loaded
// cluster's server CPU (docs/benchmarks.md); release builds of abseil have it off, and it only
// ever checks gRPC's own locks. C++ because the switch is a C++ function; C callers see one
// extern "C" function, declared in rpc_internal.h.
#include <absl/synchronization/mutex.h>

extern "C" void rpc_absl_deadlock_detection_off(void)
{
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}
