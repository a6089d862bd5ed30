// Umbrella header of the C shim: uAPI structs and ioctl (vsmmu_uapi.h), sockets (vsmmu_socket.h),
// processes: pidfd, exec, RLIMIT_MEMLOCK (vsmmu_process.h), change signals: uevents and inotify (vsmmu_uevent.h).
#include "vsmmu_uapi.h"
#include "vsmmu_socket.h"
#include "vsmmu_process.h"
#include "vsmmu_uevent.h"
