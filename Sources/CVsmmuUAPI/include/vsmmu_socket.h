// Why this header exists: SCM_RIGHTS and SO_PEERCRED need the CMSG_* macros and
// struct ucred, which Swift cannot use from Glibc's module directly.
#ifndef VSMMU_SOCKET_H
#define VSMMU_SOCKET_H

#include <stddef.h>

/// sendmsg(2) of `len` bytes with `nfds` fds attached (SCM_RIGHTS). Returns bytes sent or -errno.
long vsmmu_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// recvmsg(2) of up to `len` bytes; received fds go to `fds` (at most `maxfds`, the count in
/// `*nfds`; extra ones are closed). Returns bytes read (0 at EOF) or -errno.
long vsmmu_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);

/// SO_PEERCRED of a connected Unix socket. Returns 0 or -errno.
int vsmmu_peer_cred(int sock, int *pid, unsigned int *uid, unsigned int *gid);

/// socket + bind + listen on a Unix path (removing a stale socket first), mode set with
/// fchmod before bind so the path never exists with wider permissions. Returns fd or -errno.
int vsmmu_listen_unix(const char *path, unsigned int mode);

/// socket + connect to a Unix path. Returns fd or -errno.
int vsmmu_connect_unix(const char *path);

/// sd_notify(3)'s protocol: send `state` to $NOTIFY_SOCKET if set. Returns 0, or -errno.
int vsmmu_sd_notify(const char *state);

#endif
