/*
 * /init of the hello-node microVM: the only program the kernel starts, and the function's launcher.
 *
 * It does what a distribution's init would do for a single application, and nothing else:
 *   1. mounts /proc, /sys and /dev (devtmpfs);
 *   2. prints "@@uniobs/1 mark kernel_ready t=<seconds since boot>" on the console;
 *   3. loads the kernel modules listed in /etc/modules.load (build.py wrote that list, dependencies
 *      first, from the kernel's modules.dep) with finit_module(2);
 *   4. brings up lo and eth0 with ioctls: 10.0.2.15/24, default route via 10.0.2.2 (the addresses
 *      QEMU's user-mode networking hands out);
 *   5. execs /usr/bin/node /app/app.js with a fixed environment, plus TRACEPARENT when the kernel
 *      command line carries a well-formed "traceparent=" (W3C trace context).
 *
 * The command line is the only outside input. It is never handed to a shell, or to anything
 * else: the one value taken from it (traceparent) is checked character by character first.
 *
 * On any failure it prints "@@uniobs/1 log fatal <what failed>" and powers the machine off, so that
 * QEMU exits instead of hanging. Without ACPI (-machine microvm,acpi=off) the kernel cannot power
 * off and would halt for good instead, so there it reboots, which QEMU turns into an exit under
 * -no-reboot; failing that, PID 1 exits, the kernel panics, and panic=-1 reboots.
 *
 * Built static (gcc -static -Os, glibc), so the initramfs needs no loader for it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PREFIX "@@uniobs/1 "
#define NODE "/usr/bin/node"
#define APP "/app/app.js"
#define MODULE_LIST "/etc/modules.load"
#define GUEST_ADDR "10.0.2.15"
#define GUEST_MASK "255.255.255.0"
#define GATEWAY "10.0.2.2"
#define NET_WAIT_MS 3000

/* ---- output ---------------------------------------------------------------------------------- */

/* One write(2) per line: nothing is buffered across the execve, and lines never interleave. */
static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(STDOUT_FILENO, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (int)w;
    }
}

/* Seconds since boot (CLOCK_BOOTTIME is the clock /proc/uptime shows), as "S.ffffff". */
static void uptime(char *buf, size_t len) {
    struct timespec ts;
    if (clock_gettime(CLOCK_BOOTTIME, &ts) != 0)
        ts.tv_sec = 0, ts.tv_nsec = 0;
    snprintf(buf, len, "%lld.%06ld", (long long)ts.tv_sec, ts.tv_nsec / 1000);
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Says what failed (with errno's text when err != 0), then stops the machine. Never returns. */
static void fatal(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fatal(int err, const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (err)
        emit(PREFIX "log fatal init: %s: %s", what, strerror(err));
    else
        emit(PREFIX "log fatal init: %s", what);
    sync();
    /* Power-off needs a way to do it (ACPI here); without one the kernel turns it into a halt
     * that never returns, and QEMU would sit there. A reboot always works: -no-reboot ends QEMU. */
    if (access("/sys/firmware/acpi/tables", F_OK) == 0)
        reboot(RB_POWER_OFF);
    reboot(RB_AUTOBOOT);
    _exit(1); /* PID 1 exiting panics the kernel; panic=-1 reboots; -no-reboot ends QEMU. */
}

/* ---- setup steps ----------------------------------------------------------------------------- */

static void mount_or_die(const char *src, const char *target, const char *type, unsigned long flags) {
    if (mkdir(target, 0755) != 0 && errno != EEXIST)
        fatal(errno, "mkdir %s", target);
    if (mount(src, target, type, flags, NULL) != 0 && errno != EBUSY)
        fatal(errno, "mount %s on %s", type, target);
}

/* The kernel opened /dev/console from the initramfs for fds 0-2; if that failed, try again now. */
static void ensure_console(void) {
    if (fcntl(STDOUT_FILENO, F_GETFD) != -1)
        return;
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        _exit(1); /* nowhere to report to; the panic that follows is the report */
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

/* Reads a whole small file into buf (NUL-terminated). Returns its length, or -1 with errno. */
static ssize_t read_small_file(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t used = 0;
    for (;;) {
        ssize_t r = read(fd, buf + used, len - 1 - used);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0 || (used += (size_t)r) == len - 1)
            break;
    }
    close(fd);
    buf[used] = '\0';
    return (ssize_t)used;
}

/* Loads each module of /etc/modules.load in order. EEXIST (already loaded or built in) is fine. */
static int load_modules(void) {
    static char list[8192];
    if (read_small_file(MODULE_LIST, list, sizeof list) < 0)
        fatal(errno, "read %s", MODULE_LIST);
    int count = 0;
    for (char *save = NULL, *path = strtok_r(list, "\n", &save); path; path = strtok_r(NULL, "\n", &save)) {
        if (path[0] != '/')
            continue;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            fatal(errno, "open module %s", path);
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
            fatal(errno, "load module %s", path);
        close(fd);
        count++;
    }
    return count;
}

static void set_addr(int sock, const char *ifname, unsigned long request, const char *addr) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
        fatal(0, "bad address %s", addr);
    if (ioctl(sock, request, &ifr) != 0)
        fatal(errno, "%s %s %s", request == SIOCSIFADDR ? "SIOCSIFADDR" : "SIOCSIFNETMASK", ifname, addr);
}

static void link_up(int sock, const char *ifname) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) != 0)
        fatal(errno, "SIOCGIFFLAGS %s", ifname);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(sock, SIOCSIFFLAGS, &ifr) != 0)
        fatal(errno, "SIOCSIFFLAGS %s up", ifname);
}

static void add_default_route(int sock, const char *gateway) {
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst;
    struct sockaddr_in *mask = (struct sockaddr_in *)&rt.rt_genmask;
    struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
    dst->sin_family = mask->sin_family = gw->sin_family = AF_INET; /* 0.0.0.0/0 */
    if (inet_pton(AF_INET, gateway, &gw->sin_addr) != 1)
        fatal(0, "bad gateway %s", gateway);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(sock, SIOCADDRT, &rt) != 0 && errno != EEXIST)
        fatal(errno, "SIOCADDRT default via %s", gateway);
}

static void setup_network(void) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        fatal(errno, "socket(AF_INET)");
    link_up(sock, "lo"); /* the kernel gives lo 127.0.0.1 when it comes up */
    /* virtio_net probes while its module loads, so eth0 is normally there already; allow for an
     * asynchronous probe anyway. */
    double deadline = seconds_now() + NET_WAIT_MS / 1000.0;
    while (if_nametoindex("eth0") == 0) {
        if (seconds_now() > deadline)
            fatal(0, "no eth0 after %d ms (needs -device virtio-net-device, and ACPI on: Debian's kernel "
                     "finds virtio-mmio devices through ACPI only)", NET_WAIT_MS);
        usleep(10 * 1000);
    }
    set_addr(sock, "eth0", SIOCSIFADDR, GUEST_ADDR);
    set_addr(sock, "eth0", SIOCSIFNETMASK, GUEST_MASK);
    link_up(sock, "eth0");
    add_default_route(sock, GATEWAY);
    close(sock);
}

/* ---- the command line ------------------------------------------------------------------------ */

static int all_hex(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int all_zero(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0')
            return 0;
    return 1;
}

/* W3C traceparent, version 00 layout: 2 hex - 32 hex - 16 hex - 2 hex, lowercase; ids not all zero;
 * version ff is invalid. A later version may append "-..." fields; they are not passed on. */
static int valid_traceparent(const char *v, size_t n) {
    if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return 0;
    if (!all_hex(v, 2) || !all_hex(v + 3, 32) || !all_hex(v + 36, 16) || !all_hex(v + 53, 2))
        return 0;
    if (memcmp(v, "ff", 2) == 0 || all_zero(v + 3, 32) || all_zero(v + 36, 16))
        return 0;
    return n == 55 || (memcmp(v, "00", 2) != 0 && v[55] == '-');
}

/* Finds "traceparent=<value>" among the space-separated words of /proc/cmdline. On success, out
 * holds "TRACEPARENT=<the 55 checked characters>". Returns 1 if found and valid, -1 if malformed. */
static int traceparent_from_cmdline(char *out, size_t outlen) {
    static char cmdline[4096];
    if (read_small_file("/proc/cmdline", cmdline, sizeof cmdline) < 0)
        fatal(errno, "read /proc/cmdline");
    static const char key[] = "traceparent=";
    for (char *p = cmdline; *p;) {
        while (*p == ' ' || *p == '\n' || *p == '\t')
            p++;
        size_t len = strcspn(p, " \n\t");
        if (len > sizeof key - 1 && memcmp(p, key, sizeof key - 1) == 0) {
            const char *v = p + sizeof key - 1;
            if (!valid_traceparent(v, len - (sizeof key - 1)))
                return -1;
            snprintf(out, outlen, "TRACEPARENT=%.55s", v);
            return 1;
        }
        p += len;
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(void) {
    ensure_console();
    mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
    mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);

    char t[32];
    uptime(t, sizeof t);
    emit(PREFIX "mark kernel_ready t=%s", t);
    double start = seconds_now();

    int modules = load_modules();
    setup_network();
    sethostname("hello-node", strlen("hello-node"));

    char traceparent[80] = "";
    if (traceparent_from_cmdline(traceparent, sizeof traceparent) < 0) {
        emit(PREFIX "log warn init: ignoring a malformed traceparent= on the kernel command line");
        traceparent[0] = '\0';
    }

    emit(PREFIX "metric init.setup.duration gauge %.6f unit=s modules=%d", seconds_now() - start, modules);

    /* A fixed environment: nothing of the kernel's own (it passes unknown "k=v" words of the
     * command line to init as environment variables) reaches the application unchecked.
     * UNIOBS_BOOT_CLOCK tells app.js that /proc/uptime counts from this machine's boot, so its
     * marks can carry t= on the same clock as kernel_ready. */
    char *envp[] = {
        "PATH=/usr/bin:/bin",
        "HOME=/root",
        "NODE_ENV=production",
        "UNIOBS_BOOT_CLOCK=1",
        traceparent[0] ? traceparent : NULL,
        NULL,
    };
    char *argv[] = {NODE, APP, NULL};
    execve(NODE, argv, envp);
    fatal(errno, "execve %s %s", NODE, APP);
}
