/*
 * boot.S: multiboot v1 header, 32-bit entry point, flat GDT and interrupt stubs.
 *
 * The multiboot loader (QEMU's -kernel, GRUB, ...) enters _start in 32-bit protected mode with
 * paging off, interrupts off, EAX = 0x2BADB002 and EBX = physical address of the multiboot info.
 * The segment registers are flat but the GDT they came from is "undefined" by the spec (it may sit
 * in memory we later overwrite), so we load our own before anything can reload a segment.
 */

#define MB_MAGIC 0x1BADB002
/* bit 0: align modules on pages (we have none; harmless), bit 1: give us mem_* and the mmap.
 * Bit 16 (a.out kludge) stays clear: QEMU and GRUB load our ELF program headers themselves. */
#define MB_FLAGS 0x00000003

        .section .multiboot, "a"
        .align 4
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)    /* checksum: the three words sum to 0 */

        .section .bss
        .align 16
stack_bottom:
        .skip 16384
stack_top:

        .section .data
        /* In .data, not .bss: it is written before .bss is cleared. */
        .align 8
        .globl tsc_entry
tsc_entry:
        .long 0, 0

        .align 8
gdt:
        .quad 0                         /* 0x00: the null descriptor the CPU requires */
        .quad 0x00CF9A000000FFFF        /* 0x08: code, base 0, limit 4 GiB, 32-bit, ring 0 */
        .quad 0x00CF92000000FFFF        /* 0x10: data, base 0, limit 4 GiB, writable */
gdt_end:
gdt_desc:
        .word gdt_end - gdt - 1
        .long gdt

        .section .text
        .globl _start
_start:
        /* First instruction that matters: the TSC at entry is the guest's t=0. Everything the
         * firmware and QEMU did before this point is invisible to the guest's uptime. */
        mov     %eax, %esi              /* keep the multiboot magic; rdtsc clobbers EDX:EAX */
        rdtsc
        mov     %eax, tsc_entry
        mov     %edx, tsc_entry+4

        lgdt    gdt_desc
        ljmp    $0x08, $1f              /* far jump reloads CS from our GDT */
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %fs
        mov     %ax, %gs
        mov     %ax, %ss

        /* Clear .bss (the stack lives there too, so do it before the first push). QEMU zeroes
         * p_memsz beyond p_filesz, but the multiboot spec does not promise it for every loader. */
        cld
        mov     $__bss_start, %edi
        mov     $__bss_end, %ecx
        sub     %edi, %ecx
        xor     %eax, %eax
        rep stosb

        mov     $stack_top, %esp
        xor     %ebp, %ebp              /* terminates frame-pointer walks */
        push    %ebx                    /* arg 2: multiboot info pointer */
        push    %esi                    /* arg 1: multiboot magic */
        call    kmain
        /* kmain never returns; if it did, stop the CPU for good. */
halt_forever:
        cli
        hlt
        jmp     halt_forever

/*
 * CPU exception stubs, vectors 0-31. The CPU pushes an error code for some vectors only; the
 * others push a dummy 0 so that cpu_exception(vector, error, eip) always sees the same frame.
 */
        .macro EXC vec, has_err
exc_\vec:
        .if \has_err == 0
        pushl   $0
        .endif
        pushl   $\vec
        jmp     exc_common
        .endm

        .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
        EXC     \v, 0
        .endr
        .irp v, 8,10,11,12,13,14,17,21,29,30
        EXC     \v, 1
        .endr

exc_common:
        cld
        call    cpu_exception           /* stack: vector, error, eip, cs, eflags; never returns */
        jmp     halt_forever

/* IRQ 0 (PIT channel 0) after the PIC is remapped to vector 0x20: count the tick, EOI, return.
 * Only used while the kernel idles with HLT (run_ms); the C code reads timer_ticks. */
        .globl irq0_stub
irq0_stub:
        pushl   %eax
        incl    timer_ticks
        movb    $0x20, %al
        outb    %al, $0x20              /* non-specific end-of-interrupt to the master PIC */
        popl    %eax
        iret

/* IRQs 1-15 are masked; only the PIC's spurious IRQ 7/15 can still arrive. A spurious IRQ must
 * not be acknowledged with an EOI, so this just returns. */
        .globl irq_spurious_stub
irq_spurious_stub:
        iret

        .section .rodata
        .align 4
        .globl exc_stubs
exc_stubs:
        .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .long   exc_\v
        .endr

        .section .note.GNU-stack, "", @progbits
