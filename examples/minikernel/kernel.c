/*
 * kernel.c: minikernel, the uniobs example unikernel.
 *
 * A single-address-space, single-CPU, 32-bit protected-mode kernel: no paging, no libc, no
 * threads. It talks the uniobs/1 console line protocol on COM1 and stops QEMU through
 * isa-debug-exit. See README.md for the command line and the exit statuses.
 *
 * Every hardware access is polled, with interrupts off, except while idling in run_ms (PIT IRQ 0
 * wakes HLT). Nothing here needs libgcc: 64-bit division goes through div64() below.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define BANNER "minikernel 0.1 (uniobs example unikernel)"
#define REC "@@uniobs/1 "               /* the protocol marker every record line starts with */

/* Exit values written to isa-debug-exit; QEMU's process status is then (value << 1) | 1. */
#define EXIT_USAGE 2                    /* invalid command line -> QEMU status 5 */
#define EXIT_PANIC 3                    /* panic or CPU exception -> QEMU status 7 */

/* ------------------------------------------------------------------------------------------ */
/* CPU and port helpers                                                                        */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ volatile("pause"); }

/* GCC may emit calls to these for struct copies and zeroing even in freestanding mode. String
 * instructions keep the compiler from "optimising" the loops back into calls to themselves. */
void *memset(void *d, int c, size_t n)
{
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}
void *memcpy(void *d, const void *s, size_t n)
{
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return r;
}

/* 64-by-32 unsigned division with DIV: a 32-bit libgcc (__udivdi3) is not needed. Dividing the
 * high word first leaves a remainder < d in EDX, so the second DIV cannot overflow (#DE). */
static u64 div64(u64 n, u32 d, u32 *rem)
{
    u32 hi = (u32)(n >> 32), lo = (u32)n, qlo, r;
    u32 qhi = hi / d;
    hi %= d;
    __asm__("divl %4" : "=a"(qlo), "=d"(r) : "a"(lo), "d"(hi), "rm"(d));
    if (rem)
        *rem = r;
    return ((u64)qhi << 32) | qlo;
}

static size_t kstrlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}
static bool kstreq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* ------------------------------------------------------------------------------------------ */
/* COM1 serial console: 16550A UART at I/O port 0x3f8, polled                                  */

#define COM1 0x3f8
static u32 tx_fifo_size = 1, tx_budget;

static void serial_init(void)
{
    outb(COM1 + 1, 0x00);       /* IER: no UART interrupts, we poll the line status */
    outb(COM1 + 3, 0x80);       /* LCR: DLAB=1 exposes the divisor latch at +0/+1 */
    outb(COM1 + 0, 0x01);       /* DLL: divisor 1 = 115200 baud (QEMU ignores it, hardware doesn't) */
    outb(COM1 + 1, 0x00);       /* DLM */
    outb(COM1 + 3, 0x03);       /* LCR: DLAB=0, 8 data bits, no parity, 1 stop bit (8N1) */
    outb(COM1 + 2, 0xC7);       /* FCR: enable and clear both FIFOs, RX trigger at 14 bytes */
    outb(COM1 + 4, 0x03);       /* MCR: DTR + RTS; OUT2 (IRQ gate) off as we never take IRQs */
    /* IIR bits 7:6 read 11 when the 16-byte FIFO really is on (16550A). Then one THRE wait can
     * be followed by 16 writes, halving the port I/O (each one a VM exit) in floods. */
    tx_fifo_size = (inb(COM1 + 2) & 0xC0) == 0xC0 ? 16 : 1;
}

/* While set, output goes to this buffer instead of the UART (used by panic()). */
static char *capture;
static size_t capture_len, capture_cap;

static void kputc(char c)
{
    if (capture) {
        if (capture_len < capture_cap - 1)
            capture[capture_len++] = c;
        return;
    }
    if (tx_budget == 0) {
        /* LSR bit 5 (THRE): transmit holding register / FIFO empty. QEMU clears it while its
         * chardev backend is full, so this is also our backpressure: nothing is dropped. A
         * missing UART reads 0xFF and never blocks. */
        while (!(inb(COM1 + 5) & 0x20))
            cpu_relax();
        tx_budget = tx_fifo_size;
    }
    outb(COM1, (u8)c);
    tx_budget--;
}

static void kwrite(const char *s, size_t n)
{
    while (n--)
        kputc(*s++);
}
static void kputs(const char *s) { kwrite(s, kstrlen(s)); }

/* printf subset: %s %.*s %c %d %u %x %llu %llx %%, with optional '0' flag and width.
 * Lines end with a bare "\n": QEMU keeps the host terminal's output post-processing on. */
static void put_num(u64 v, u32 base, int width, char pad, bool neg)
{
    char buf[24];
    int i = 0;
    do {
        u32 r;
        v = div64(v, base, &r);
        buf[i++] = "0123456789abcdef"[r];
    } while (v);
    if (neg)
        buf[i++] = '-';
    while (width-- > i)
        kputc(pad);
    while (i)
        kputc(buf[--i]);
}

static void kvprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            kputc(*fmt);
            continue;
        }
        char pad = ' ';
        int width = 0, longs = 0, prec = -1;
        if (*++fmt == '0')
            pad = '0', fmt++;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        if (fmt[0] == '.' && fmt[1] == '*')
            prec = va_arg(ap, int), fmt += 2;
        while (*fmt == 'l')
            longs++, fmt++;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            kwrite(s, prec >= 0 ? (size_t)prec : kstrlen(s));
            break;
        }
        case 'c':
            kputc((char)va_arg(ap, int));
            break;
        case 'd': {
            long long v = longs >= 2 ? va_arg(ap, long long) : va_arg(ap, int);
            put_num(v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
        case 'x': {
            u64 v = longs >= 2 ? va_arg(ap, u64) : va_arg(ap, u32);
            put_num(v, *fmt == 'u' ? 10 : 16, width, pad, false);
            break;
        }
        case '%':
            kputc('%');
            break;
        default:                /* unknown verb: print it, so the bug is visible */
            kputc('%');
            kputc(*fmt);
            if (!*fmt)
                fmt--;
        }
    }
}

__attribute__((format(printf, 1, 2))) static void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvprintf(fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------------------------ */
/* Exit paths: isa-debug-exit, triple fault, hang                                              */

static void triple_fault(void)
{
    /* An IDT of limit 0 has no valid gate: INT3 -> #GP (gate beyond limit) -> #DF (no #GP gate)
     * -> triple fault (no #DF gate). The CPU shuts down; QEMU resets it, or exits with
     * -no-reboot. */
    static const struct __attribute__((packed)) { u16 limit; u32 base; } no_idt = { 0, 0 };
    __asm__ volatile("cli; lidt %0; int3" : : "m"(no_idt));
    for (;;)
        ;
}

__attribute__((noreturn)) static void qemu_exit(u32 value)
{
    /* isa-debug-exit: any write to its port makes QEMU exit((value << 1) | 1). */
    outl(0xf4, value);
    /* Still running: the device is missing. Stop the VM the only other portable way. */
    kputs(REC "log error isa-debug-exit at 0xf4 did not stop QEMU; triple-faulting instead\n");
    triple_fault();
    __builtin_unreachable();
}

__attribute__((noreturn)) static void hang(void)
{
    /* With IF=0 only an NMI or reset can leave HLT; QEMU then idles at no CPU cost. */
    for (;;)
        __asm__ volatile("cli; hlt");
}

static bool panicking;

__attribute__((noreturn, format(printf, 1, 2))) static void panic(const char *fmt, ...)
{
    if (panicking)              /* a fault while printing the panic: just stop */
        qemu_exit(EXIT_PANIC);
    panicking = true;
    /* Format once, so the human line and the record carry the same text. */
    char reason[160];
    va_list ap;
    va_start(ap, fmt);
    capture = reason;
    capture_len = 0;
    capture_cap = sizeof reason;
    kvprintf(fmt, ap);
    reason[capture_len] = 0;
    capture = NULL;
    va_end(ap);
    kprintf("PANIC: %s\n", reason);
    kprintf(REC "log fatal panic: %s\n", reason);
    qemu_exit(EXIT_PANIC);
}

/* ------------------------------------------------------------------------------------------ */
/* Interrupts: IDT for exceptions (so faults print a panic instead of silently triple-faulting) */
/* and, only when idling, the PIC + PIT timer interrupt.                                       */

extern void (*const exc_stubs[32])(void);
extern void irq0_stub(void), irq_spurious_stub(void);
volatile u32 timer_ticks;       /* incremented by irq0_stub */

static struct __attribute__((packed)) { u16 off_lo, sel; u8 zero, type; u16 off_hi; } idt[0x30];

static void set_gate(int vec, void (*handler)(void))
{
    u32 a = (u32)handler;
    idt[vec].off_lo = (u16)a;
    idt[vec].sel = 0x08;        /* our flat code segment (boot.S) */
    idt[vec].zero = 0;
    idt[vec].type = 0x8E;       /* present, ring 0, 32-bit interrupt gate: IF is cleared on entry */
    idt[vec].off_hi = (u16)(a >> 16);
}

static void idt_init(void)
{
    for (int v = 0; v < 32; v++)
        set_gate(v, exc_stubs[v]);
    set_gate(0x20, irq0_stub);
    for (int v = 0x21; v < 0x30; v++)
        set_gate(v, irq_spurious_stub);
    /* Vectors >= 0x30 are beyond the limit: a stray one raises #GP, which panics. */
    struct __attribute__((packed)) { u16 limit; u32 base; } d = { sizeof idt - 1, (u32)idt };
    __asm__ volatile("lidt %0" : : "m"(d));
}

void cpu_exception(u32 vector, u32 error, u32 eip)
{
    static const char *const names[32] = {
        "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range", "invalid opcode",
        "device not available", "double fault", "coprocessor overrun", "invalid TSS",
        "segment not present", "stack fault", "general protection", "page fault", "reserved",
        "x87 FP error", "alignment check", "machine check", "SIMD FP error", "virtualization",
        "control protection", "reserved", "reserved", "reserved", "reserved", "reserved",
        "reserved", "hypervisor injection", "VMM communication", "security", "reserved",
    };
    panic("CPU exception %u (%s), error code 0x%x, eip 0x%08x", vector, names[vector & 31], error, eip);
}

/* ------------------------------------------------------------------------------------------ */
/* Time: TSC counted from entry, calibrated against the PIT                                    */

extern u64 tsc_entry;           /* TSC at the first instruction of _start (boot.S) */
static u32 tsc_khz;             /* 0 until calibrated or given as tsc_khz= */

#define PIT_HZ 1193182u         /* the 8254's input clock, fixed since the IBM PC */
#define PIT_CH0 0x40
#define PIT_CMD 0x43

static u16 pit_count0(void)
{
    outb(PIT_CMD, 0x00);        /* counter-latch command for channel 0: freezes a coherent copy */
    u8 lo = inb(PIT_CH0);
    u8 hi = inb(PIT_CH0);
    return (u16)(lo | hi << 8);
}

/* Counts TSC cycles across 10 ms of PIT ticks (11932 ticks of 838 ns) with channel 0 free-running.
 * Channel 0 rather than the channel 2 gate at port 0x61: QEMU's microvm has a PIT but no PC
 * speaker, and port 0x61 lives in the speaker device. Both endpoints are taken right after a count
 * change, so the polling latency cancels out. Returns 0 if the PIT does not count (absent). */
static u32 calibrate_tsc_pit(void)
{
    outb(PIT_CMD, 0x34);        /* channel 0, lobyte/hibyte access, mode 2 (rate generator), binary */
    outb(PIT_CH0, 0);           /* reload value 0 means 65536: the count wraps every 54.9 ms, far */
    outb(PIT_CH0, 0);           /* longer than any gap between two polls, so no wrap is missed */
    u16 prev = pit_count0(), c;
    u32 idle = 0, ticks = 0;
    while ((c = pit_count0()) == prev)
        if (++idle > 100000)
            return 0;
    u64 t0 = rdtsc();
    prev = c;
    while (ticks < PIT_HZ / 100) {
        c = pit_count0();
        if (c == prev) {
            if (++idle > 100000)
                return 0;
            continue;
        }
        ticks += (u16)(prev - c);   /* counts down; u16 arithmetic handles the wrap */
        prev = c;
        idle = 0;
    }
    u64 cycles = rdtsc() - t0;
    /* kHz = cycles / (ticks / PIT_HZ) / 1000 */
    return (u32)div64(cycles * PIT_HZ, ticks * 1000u, NULL);
}

static u64 uptime_us(void)
{
    return div64((rdtsc() - tsc_entry) * 1000u, tsc_khz, NULL);
}

/* Appends " t=<seconds>.<6 digits>" (guest uptime since entry), or the raw TSC cycles since entry
 * while the TSC rate is still unknown (only the boot mark, before calibration). */
static void put_t(void)
{
    if (!tsc_khz) {
        kprintf(" cycles=%llu", rdtsc() - tsc_entry);
        return;
    }
    u32 us;
    u32 s = (u32)div64(uptime_us(), 1000000, &us);
    kprintf(" t=%u.%06u", s, us);
}

/* ------------------------------------------------------------------------------------------ */
/* Multiboot information and the command line                                                 */

#define MB_BOOT_MAGIC 0x2BADB002
#define MBI_MEM (1u << 0)
#define MBI_CMDLINE (1u << 2)
#define MBI_MODS (1u << 3)
#define MBI_MMAP (1u << 6)

struct mb_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    u32 syms[4], mmap_length, mmap_addr;
};
struct __attribute__((packed)) mb_mmap {
    u32 size;                   /* of the rest of the entry: entries are variable-sized */
    u64 addr, len;
    u32 type;                   /* 1 = usable RAM */
};
struct mb_mod { u32 start, end, string, reserved; };

static char cmdline[1024];      /* copied: the loader's copy lies where the heap will go */

/* The loader's command line starts with the kernel's path ("build/minikernel.elf mode=ok");
 * keep only what follows it. */
static void cmdline_copy(const char *src)
{
    if (*src && *src != ' ') {
        const char *p = src;
        while (*p && *p != ' ' && *p != '=')
            p++;
        if (*p != '=')          /* first word has no '=': it is the path */
            src = p;
    }
    while (*src == ' ')
        src++;
    size_t n = 0;
    while (src[n] && n < sizeof cmdline - 1)
        n++;
    memcpy(cmdline, src, n);
    cmdline[n] = 0;
}

enum mode { MODE_OK, MODE_PANIC, MODE_TRIPLEFAULT, MODE_GARBAGE, MODE_FLOOD, MODE_HANG };
static const char *const mode_names[] = { "ok", "panic", "triplefault", "garbage", "flood", "hang" };
static const char *const milestones[] = { "boot", "kernel_ready", "app_start", "ready" };

static struct options {
    enum mode mode;
    u32 work_ms, work_iters, mem_kb, run_ms, beat_ms, exit_value, flood_kb, longline_kb;
    u32 tsc_khz, seed;
    bool have_work_iters, have_seed, idle_spin, have_traceparent;
    const char *hang_at;
    char trace_id[33], parent_id[17];
} opt;

static bool parse_u32(const char *s, size_t n, u32 *out)
{
    u64 v = 0;
    if (n == 0 || n > 10)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (u32)(s[i] - '0');
    }
    if (v > 0xFFFFFFFFu)
        return false;
    *out = (u32)v;
    return true;
}

static bool is_lower_hex(const char *s, size_t n, bool *all_zero)
{
    *all_zero = true;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
        if (s[i] != '0')
            *all_zero = false;
    }
    return true;
}

/* W3C trace-context, version-00 layout: 2 hex version (not "ff"), 32 hex trace-id, 16 hex
 * parent-id, 2 hex flags, all lowercase; all-zero ids are invalid. */
static bool parse_traceparent(const char *v, size_t n)
{
    bool z1, z2, z3, z4;
    if (n != 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return false;
    if (!is_lower_hex(v, 2, &z1) || !is_lower_hex(v + 3, 32, &z2) || !is_lower_hex(v + 36, 16, &z3)
        || !is_lower_hex(v + 53, 2, &z4) || z2 || z3 || (v[0] == 'f' && v[1] == 'f'))
        return false;
    memcpy(opt.trace_id, v + 3, 32);
    opt.trace_id[32] = 0;
    memcpy(opt.parent_id, v + 36, 16);
    opt.parent_id[16] = 0;
    return true;
}

static bool token_is(const char *s, size_t n, const char *word)
{
    size_t i = 0;
    for (; i < n && word[i]; i++)
        if (s[i] != word[i])
            return false;
    return i == n && !word[i];
}

/* Parses cmdline into opt. Called twice: silently before the banner (only tsc_khz matters then),
 * and again after it to report problems. Unknown keys are warnings (a launcher may add its own);
 * a bad value for a known key is an error. Returns the number of errors. */
static int parse_options(bool report)
{
    static const struct { const char *key; u32 *val; } nums[] = {
        { "work_ms", &opt.work_ms }, { "work_iters", &opt.work_iters }, { "mem_kb", &opt.mem_kb },
        { "run_ms", &opt.run_ms }, { "beat_ms", &opt.beat_ms }, { "exit", &opt.exit_value },
        { "flood_kb", &opt.flood_kb }, { "longline_kb", &opt.longline_kb },
        { "tsc_khz", &opt.tsc_khz }, { "seed", &opt.seed },
    };
    int errors = 0;
    memset(&opt, 0, sizeof opt);
    opt.beat_ms = 100;
    opt.flood_kb = 64;
    opt.longline_kb = 64;
    opt.hang_at = "ready";

    for (const char *p = cmdline; *p;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *w = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        size_t wn = (size_t)(p - w), kn = 0;
        if (wn == 0)
            break;
        while (kn < wn && w[kn] != '=')
            kn++;
        const char *v = w + kn + 1;
        size_t vn = kn < wn ? wn - kn - 1 : 0;
        bool known = true, ok = kn < wn;

        if (token_is(w, kn, "mode")) {
            ok = false;
            for (u32 i = 0; i < sizeof mode_names / sizeof *mode_names; i++)
                if (token_is(v, vn, mode_names[i]))
                    opt.mode = (enum mode)i, ok = true;
        } else if (token_is(w, kn, "hang_at")) {
            ok = false;
            for (u32 i = 0; i < sizeof milestones / sizeof *milestones; i++)
                if (token_is(v, vn, milestones[i]))
                    opt.hang_at = milestones[i], ok = true;
        } else if (token_is(w, kn, "idle")) {
            ok = token_is(v, vn, "hlt") || token_is(v, vn, "spin");
            opt.idle_spin = token_is(v, vn, "spin");
        } else if (token_is(w, kn, "traceparent")) {
            /* As W3C trace-context prescribes, an invalid traceparent is ignored (with a warning),
             * and the guest starts a trace of its own. */
            opt.have_traceparent = parse_traceparent(v, vn);
            if (!opt.have_traceparent && report)
                kprintf(REC "log warn invalid traceparent ignored: %.*s\n", (int)vn, v);
        } else {
            known = false;
            for (u32 i = 0; i < sizeof nums / sizeof *nums; i++) {
                if (token_is(w, kn, nums[i].key)) {
                    u32 n;
                    known = true;
                    ok = ok && parse_u32(v, vn, &n);
                    /* The exit status byte holds 7 bits of value; a zero beat never advances. */
                    if ((nums[i].val == &opt.exit_value && n > 127) || (nums[i].val == &opt.beat_ms && n == 0))
                        ok = false;
                    if (!ok)
                        break;
                    *nums[i].val = n;
                    opt.have_work_iters |= nums[i].val == &opt.work_iters;
                    opt.have_seed |= nums[i].val == &opt.seed;
                }
            }
        }
        if (!known) {
            if (report)
                kprintf(REC "log warn unknown option ignored: %.*s\n", (int)wn, w);
        } else if (!ok) {
            errors++;
            if (report)
                kprintf(REC "log error invalid option: %.*s\n", (int)wn, w);
        }
    }
    return errors;
}

/* ------------------------------------------------------------------------------------------ */
/* Idling: HLT woken by PIT IRQ 0 at 1 kHz, or spinning if that is unavailable or idle=spin    */

static int timer_irq_state;     /* 0 not tried, 1 working, -1 unavailable */

/* With the local APIC enabled, the 8259's INTR output reaches the CPU only through the APIC's
 * LINT0 pin in ExtINT mode ("virtual wire"). SeaBIOS (-machine pc) sets that up; qboot (microvm)
 * leaves LINT0 masked and the APIC software-disabled, so PIT interrupts would never arrive. */
static void lapic_virtual_wire(void)
{
    u32 eax = 1, ebx, ecx = 0, edx, lo, hi;
    __asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
    if (!(edx & (1u << 9)))     /* CPUID.1:EDX.APIC: no local APIC, the PIC drives INTR itself */
        return;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0x1B));    /* IA32_APIC_BASE */
    if (!(lo & (1u << 11)))     /* APIC globally disabled: likewise */
        return;
    volatile u32 *apic = (volatile u32 *)(lo & 0xFFFFF000u);       /* MMIO, paging is off */
    /* LVT writes are forced masked while the APIC is software-disabled: enable it first (SVR
     * bit 8), with spurious vector 0x2f, which is the do-nothing stub. */
    apic[0xF0 / 4] = 0x100 | 0x2F;
    apic[0x350 / 4] = 0x700;    /* LVT LINT0: delivery mode ExtINT, unmasked, edge */
}

static bool timer_irq_start(void)
{
    /* Remap the 8259 PICs: the BIOS default (IRQ 0 -> vector 8) collides with CPU exceptions. */
    outb(0x20, 0x11);           /* ICW1: edge triggered, cascade, ICW4 follows */
    outb(0xA0, 0x11);
    outb(0x21, 0x20);           /* ICW2: master IRQs 0-7 -> vectors 0x20-0x27 */
    outb(0xA1, 0x28);           /*       slave IRQs 8-15 -> vectors 0x28-0x2f */
    outb(0x21, 0x04);           /* ICW3: slave on master's IRQ 2 */
    outb(0xA1, 0x02);           /*       slave's cascade identity 2 */
    outb(0x21, 0x01);           /* ICW4: 8086 mode, normal EOI */
    outb(0xA1, 0x01);
    outb(0x21, 0xFE);           /* mask everything but IRQ 0 */
    outb(0xA1, 0xFF);
    lapic_virtual_wire();
    outb(PIT_CMD, 0x34);        /* channel 0, mode 2, reload 1193: 1000.15 Hz */
    outb(PIT_CH0, 1193 & 0xFF);
    outb(PIT_CH0, 1193 >> 8);
    /* Does IRQ 0 actually arrive (PIC present and routed)? Give it 20 ms before giving up. */
    u32 start = timer_ticks;
    u64 deadline = rdtsc() + (u64)tsc_khz * 20;
    __asm__ volatile("sti");
    while (timer_ticks - start < 2 && rdtsc() < deadline)
        cpu_relax();
    __asm__ volatile("cli");
    return timer_ticks - start >= 2;
}

static void wait_until(u64 tsc_deadline)
{
    if (!opt.idle_spin && timer_irq_state == 0) {
        timer_irq_state = timer_irq_start() ? 1 : -1;
        if (timer_irq_state < 0)
            kputs(REC "log warn no timer interrupt from the PIT; idling by spinning\n");
    }
    while (rdtsc() < tsc_deadline) {
        if (timer_irq_state > 0)
            /* STI takes effect after the next instruction, so an IRQ cannot slip in between
             * the deadline check and HLT and leave us asleep for a whole extra tick. */
            __asm__ volatile("sti; hlt; cli");
        else
            cpu_relax();
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Memory: a bump allocator over the free RAM above the kernel and the loader's data           */

extern char _end[];             /* end of .bss (linker.ld) */
static u32 heap_next, heap_end;

static u32 max_u32(u32 a, u32 b) { return a > b ? a : b; }

static void memory_init(const struct mb_info *mbi, bool have_mbi)
{
    /* The loader puts its info block, the command line, module list and memory map right after
     * the kernel image: start the heap after all of them. */
    u32 start = (u32)_end;
    u64 limit = 0;
    if (have_mbi) {
        start = max_u32(start, (u32)mbi + sizeof *mbi);
        if (mbi->flags & MBI_CMDLINE)
            start = max_u32(start, mbi->cmdline + (u32)kstrlen((const char *)mbi->cmdline) + 1);
        if (mbi->flags & MBI_MMAP)
            start = max_u32(start, mbi->mmap_addr + mbi->mmap_length);
        if (mbi->flags & MBI_MODS) {
            const struct mb_mod *m = (const struct mb_mod *)mbi->mods_addr;
            start = max_u32(start, mbi->mods_addr + mbi->mods_count * sizeof *m);
            for (u32 i = 0; i < mbi->mods_count; i++)
                start = max_u32(start, m[i].end);
        }
    }
    start = (start + 4095) & ~4095u;
    if (have_mbi && (mbi->flags & MBI_MMAP)) {
        /* Find the usable (type 1) range that contains the heap start. */
        for (u32 a = mbi->mmap_addr; a < mbi->mmap_addr + mbi->mmap_length;) {
            const struct mb_mmap *e = (const struct mb_mmap *)a;
            if (e->type == 1 && e->addr <= start && start < e->addr + e->len)
                limit = e->addr + e->len;
            a += e->size + sizeof e->size;
        }
    } else if (have_mbi && (mbi->flags & MBI_MEM)) {
        limit = 0x100000 + (u64)mbi->mem_upper * 1024;  /* mem_upper: KiB of RAM above 1 MiB */
    }
    if (limit > 0xFFFFF000u)     /* no paging: stay within 32-bit physical addresses */
        limit = 0xFFFFF000u;
    heap_next = start;
    heap_end = limit > start ? (u32)limit : start;
}

static void *alloc(u32 bytes)
{
    bytes = (bytes + 15) & ~15u;
    if (bytes > heap_end - heap_next)
        return NULL;
    void *p = (void *)heap_next;
    heap_next += bytes;
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* Spans                                                                                       */

struct span { char id[17]; const char *name, *parent; };
static u64 rng_state;

static u64 splitmix64(void)
{
    u64 z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void span_print(const char *what, const struct span *s, const char *status)
{
    kprintf(REC "span %s %s name=%s", what, s->id, s->name);
    if (s->parent)
        kprintf(" parent=%s", s->parent);
    if (opt.have_traceparent)
        kprintf(" trace=%s", opt.trace_id);
    if (status)
        kprintf(" status=%s", status);
    put_t();
    kputc('\n');
}

static void span_start(struct span *s, const char *name, const char *parent)
{
    u64 id;
    do id = splitmix64(); while (id == 0);     /* the all-zero span id is invalid */
    for (int i = 0; i < 16; i++)
        s->id[i] = "0123456789abcdef"[(u32)(id >> (60 - 4 * i)) & 15];
    s->id[16] = 0;
    s->name = name;
    s->parent = parent;
    span_print("start", s, NULL);
}

static void span_end(const struct span *s, const char *status) { span_print("end", s, status); }

/* ------------------------------------------------------------------------------------------ */
/* The "function": milestones, work, memory, and the test modes                                */

static void mark(const char *milestone)
{
    kprintf(REC "mark %s", milestone);
    put_t();
    kputc('\n');
    if (opt.mode == MODE_HANG && kstreq(milestone, opt.hang_at)) {
        kprintf(REC "log warn hanging at %s (mode=hang)\n", milestone);
        hang();
    }
}

static void mark_exit(u32 value)
{
    kprintf(REC "mark exit");
    put_t();
    kprintf(" code=%u\n", value);
}

static void put_seconds_metric(const char *name, u64 cycles)
{
    u32 us;
    u32 s = (u32)div64(div64(cycles * 1000u, tsc_khz, NULL), 1000000, &us);
    kprintf(REC "metric %s gauge %u.%06u unit=s\n", name, s, us);
}

/* One iteration: 1024 rounds of xorshift32 folded into a checksum (pure ALU work). */
static u32 work_iteration(u32 *x)
{
    u32 sum = 0;
    for (int i = 0; i < 1024; i++) {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        sum = (sum << 1 | sum >> 31) + *x;
    }
    return sum;
}

static void do_work(const struct span *parent)
{
    struct span s;
    span_start(&s, "work", parent->id);
    u32 x = 2463534242u, checksum = 0, iterations = 0;
    u64 t0 = rdtsc(), deadline = t0 + (u64)tsc_khz * opt.work_ms;
    /* work_iters= fixes the amount of work (time varies); work_ms= fixes the time. */
    while (opt.have_work_iters ? iterations < opt.work_iters : rdtsc() < deadline) {
        checksum ^= work_iteration(&x);
        iterations++;
    }
    u64 cycles = rdtsc() - t0;
    span_end(&s, "ok");
    kprintf(REC "metric minikernel.work.iterations counter %u\n", iterations);
    kprintf(REC "metric minikernel.work.checksum gauge %u\n", checksum);
    put_seconds_metric("minikernel.work.duration", cycles);
}

static void do_memory(const struct span *parent)
{
    struct span s;
    span_start(&s, "memory", parent->id);
    u32 bytes = opt.mem_kb * 1024u;
    u32 *p = opt.mem_kb <= 0x3FFFFF ? alloc(bytes) : NULL;
    if (!p) {
        span_end(&s, "error");
        panic("out of memory: mem_kb=%u but %u KiB are free", opt.mem_kb, (heap_end - heap_next) / 1024);
    }
    /* Write every word (so each page really is backed by host memory), then read one word per
     * page back to check the RAM is what we think it is. */
    u32 words = bytes / 4;
    for (u32 i = 0; i < words; i++)
        p[i] = i ^ 0xA5A5A5A5u;
    for (u32 i = 0; i < words; i += 1024)
        if (p[i] != (i ^ 0xA5A5A5A5u))
            panic("memory check failed at 0x%08x", (u32)&p[i]);
    span_end(&s, "ok");
    kprintf(REC "metric minikernel.memory.touched gauge %u unit=By\n", bytes);
}

static void do_flood(void)
{
    /* 64-byte lines: "flood 00000000 " + 48 letters + "\n"; 16 of them per KiB. */
    static const char tail[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv\n";
    u32 lines = opt.flood_kb * 16;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < lines; i++) {
        kprintf("flood %08u ", i);
        kwrite(tail, sizeof tail - 1);
    }
    kprintf(REC "metric minikernel.flood.bytes counter %u unit=By\n", lines * 64);
    put_seconds_metric("minikernel.flood.duration", rdtsc() - t0);
}

#define RAW(s) kwrite(s, sizeof(s) - 1)  /* sizeof, not strlen: the literals contain NULs */

static void do_garbage(void)
{
    /* What real consoles throw at a parser. None of it is a valid record for the milestones the
     * host waits for; the bytes are listed in README.md. */
    RAW("garbage begin\n");
    RAW("utf8: \xff\xfe | \xc3\x28 | \xe2\x82 | \x80 | \xc0\xaf | \xed\xa0\x80 | \xf8\x88\x80\x80\x80\n");
    RAW("nul: a" "\0" "b" "\0\0" "c\n");
    RAW("ansi: \x1b[31mred\x1b[0m \x1b[1;32mbold green\x1b[0m \x1b[2K\x1b[1G\x1b]0;title\x07 end\n");
    RAW("ctrl: \x01\x02\x7f back\b\bspace cr-only\r tab\there\n");
    RAW("@@uniobs/1\n");
    RAW("@@uniobs/1 \n");
    RAW("@@uniobs/1 mark\n");
    RAW("@@uniobs/1 nosuchtype a b c\n");
    RAW("@@uniobs/1 metric broken counter notanumber\n");
    RAW("@@uniobs/1 metric broken\n");
    RAW("@@uniobs/1 metric quoted gauge 1 note=\"unterminated \\\" quote\n");
    RAW("@@uniobs/1 span start nothex name=x\n");
    RAW("@@uniobs/1 span middle 0123456789abcdef\n");
    RAW("@@uniobs/1 log loud not a level\n");
    RAW("@@uniobs/1 mark garbage_test t=notanumber\n");
    RAW("@@uniobs/1 mark garbage_test t=\xff\xfe\n");
    RAW("@@uniobs/1 log info nul" "\0" "inside a record\n");
    RAW("@@uniobs/1 log info crlf-terminated record\r\n");
    RAW("@@uniobs/2 mark from_a_future_version\n");
    RAW("junk before the marker @@uniobs/1 mark not_at_line_start\n");
    /* One very long line: longline_kb KiB, no newline until the end. */
    static const char pat[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
    for (u32 i = 0; i < opt.longline_kb * 16; i++)
        kwrite(pat, 64);
    RAW("\ngarbage end\n");
}

void kmain(u32 magic, const struct mb_info *mbi)
{
    serial_init();
    bool have_mbi = magic == MB_BOOT_MAGIC;
    if (have_mbi && (mbi->flags & MBI_CMDLINE))
        cmdline_copy((const char *)mbi->cmdline);
    parse_options(false);       /* silently: tsc_khz= decides whether the boot mark has t= */
    tsc_khz = opt.tsc_khz;

    /* The leading newline makes the banner start a line even after firmware output that does
     * not end in one (SeaBIOS on -machine pc leaves "Booting from ROM.." unterminated). */
    kputs("\n" BANNER "\n");
    mark("boot");
    if (!have_mbi)
        kprintf(REC "log error not started by a multiboot loader (eax=0x%x); no command line\n", magic);
    kprintf("cmdline: %s\n", cmdline);
    int errors = parse_options(true);

    idt_init();
    const char *source = "cmdline";
    if (!tsc_khz) {
        source = "pit";
        tsc_khz = calibrate_tsc_pit();
    }
    if (!tsc_khz) {
        /* No PIT (e.g. microvm,pit=off): guess 1 GHz so time still moves, and say so. */
        source = "default";
        tsc_khz = 1000000;
        kputs(REC "log warn the PIT does not count; assuming a 1 GHz TSC (pass tsc_khz=)\n");
    }
    kprintf("calibrated tsc_khz=%u source=%s\n", tsc_khz, source);
    kprintf(REC "metric minikernel.tsc.frequency gauge %u unit=kHz source=%s\n", tsc_khz, source);

    memory_init(mbi, have_mbi);
    kprintf("memory: heap 0x%08x-0x%08x (%u KiB free)\n", heap_next, heap_end, (heap_end - heap_next) / 1024);
    kprintf(REC "metric minikernel.memory.available gauge %u unit=By\n", heap_end - heap_next);
    mark("kernel_ready");

    if (errors) {
        kprintf(REC "log fatal %d invalid option(s) on the command line\n", errors);
        mark_exit(EXIT_USAGE);
        qemu_exit(EXIT_USAGE);
    }
    /* Span ids: from seed= when given (reproducible), else from the entry TSC, which differs
     * from boot to boot; the trace id is mixed in so two traces never share ids. */
    rng_state = opt.have_seed ? opt.seed : tsc_entry;
    if (opt.have_traceparent) {
        kputs(REC "log info traceparent received\n");
        for (int i = 0; i < 32; i++)
            rng_state = (rng_state ^ (u8)opt.trace_id[i]) * 0x100000001B3ull;  /* FNV-1a step */
    }

    mark("app_start");
    if (opt.mode == MODE_GARBAGE)
        do_garbage();
    if (opt.mode == MODE_FLOOD)
        do_flood();

    u64 init_t0 = rdtsc();
    struct span init;
    span_start(&init, "init", opt.have_traceparent ? opt.parent_id : NULL);
    if (opt.mode == MODE_PANIC) {
        span_end(&init, "error");
        panic("requested by mode=panic");
    }
    if (opt.mode == MODE_TRIPLEFAULT) {
        kputs(REC "log warn triple-faulting on purpose (mode=triplefault)\n");
        triple_fault();
    }
    if (opt.work_ms || opt.have_work_iters)
        do_work(&init);
    if (opt.mem_kb)
        do_memory(&init);
    span_end(&init, "ok");
    put_seconds_metric("minikernel.init.duration", rdtsc() - init_t0);
    mark("ready");

    if (opt.run_ms) {
        u64 per_beat = (u64)tsc_khz * opt.beat_ms, t0 = rdtsc(), end = t0 + (u64)tsc_khz * opt.run_ms;
        u32 beats = 0;
        for (u64 next = t0 + per_beat; next <= end; next += per_beat) {
            wait_until(next);
            kprintf(REC "metric minikernel.heartbeat counter %u", ++beats);
            put_t();
            kputc('\n');
        }
        wait_until(end);
    }
    mark_exit(opt.exit_value);
    qemu_exit(opt.exit_value);
}
