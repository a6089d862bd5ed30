// uevent-watch: what the kernel signals, as lines (scenario vsmmu-drift, part C; lab/README.md).
//   uevent-watch DIR     listens to the kernel's uevents (NETLINK_KOBJECT_UEVENT, group 1) and
//                        to inotify on DIR; prints READY, then one line per event:
//   U ACTION DEVPATH SUBSYSTEM [SYNTH_UUID]
//   I MASK NAME          (MASK: ATTRIB CREATE DELETE IGNORED DELETE_SELF ... joined by |)
// A uevent carrying a SYNTH_UUID (a marker the scenario writes to a uevent file) is printed
// after every inotify event queued before it, so markers split the stream by the shell's
// actions. It exits after the marker whose UUID ends in "ff".
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netlink.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <unistd.h>

static int ino = -1;

static void drain_inotify(void) {
    if (ino < 0) return;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(ino, buf, sizeof(buf));
        if (n <= 0) return;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            static const struct { unsigned m; const char *s; } names[] = {
                { IN_ATTRIB, "ATTRIB" }, { IN_CREATE, "CREATE" }, { IN_DELETE, "DELETE" }, { IN_MOVED_FROM, "MOVED_FROM" },
                { IN_MOVED_TO, "MOVED_TO" }, { IN_DELETE_SELF, "DELETE_SELF" }, { IN_IGNORED, "IGNORED" }, { IN_Q_OVERFLOW, "Q_OVERFLOW" } };
            char mask[128] = "";
            for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (e->mask & names[i].m) { if (mask[0]) strcat(mask, "|"); strcat(mask, names[i].s); }
            printf("I %s %s\n", mask[0] ? mask : "OTHER", e->len ? e->name : "-");
            p += sizeof(*e) + e->len;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: uevent-watch DIR\n"); return 2; }
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_groups = 1 };
    if (nl < 0 || bind(nl, (struct sockaddr *)&addr, sizeof(addr)) != 0) { perror("uevent socket"); return 1; }
    ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ino < 0) {
        printf("I UNAVAILABLE %s\n", strerror(errno));   // no CONFIG_INOTIFY_USER: uevents only
    } else if (inotify_add_watch(ino, argv[1], IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF) < 0) {
        perror(argv[1]);
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY\n");
    char msg[8192];
    for (;;) {
        struct pollfd p[2] = { { .fd = nl, .events = POLLIN }, { .fd = ino, .events = POLLIN } };
        if (poll(p, ino < 0 ? 1 : 2, 20000) <= 0) { printf("TIMEOUT\n"); return 1; }
        if (!(p[0].revents & POLLIN)) { drain_inotify(); continue; }
        ssize_t n = recv(nl, msg, sizeof(msg) - 1, 0);
        if (n <= 0) continue;
        msg[n] = 0;
        const char *action = "", *devpath = "", *subsystem = "", *uuid = NULL;
        for (char *f = msg + strlen(msg) + 1; f < msg + n; f += strlen(f) + 1) {
            if (!strncmp(f, "ACTION=", 7)) action = f + 7;
            else if (!strncmp(f, "DEVPATH=", 8)) devpath = f + 8;
            else if (!strncmp(f, "SUBSYSTEM=", 10)) subsystem = f + 10;
            else if (!strncmp(f, "SYNTH_UUID=", 11)) uuid = f + 11;
        }
        if (uuid) drain_inotify();   // what happened before the marker, first
        printf("U %s %s %s%s%s\n", action, devpath, subsystem, uuid ? " " : "", uuid ? uuid : "");
        if (uuid && strlen(uuid) >= 2 && !strcmp(uuid + strlen(uuid) - 2, "ff")) { drain_inotify(); return 0; }
    }
}
