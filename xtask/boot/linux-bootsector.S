/*
 * A boot sector that boots a Linux bzImage with an initrd from the same disk, through the
 * 16-bit Linux boot protocol (Documentation/arch/x86/boot.rst), on a PC BIOS: the native
 * baseline of `cargo xtask bench --linux`, where Debian's kernel runs directly on the
 * project's Bochs with no hypervisor (and no boot loader from elsewhere).
 *
 * xtask writes the disk (xtask/src/platform/linux_native.rs): this sector, the command line, the
 * bzImage, the initrd, each from a sector boundary, and fills in the parameter block below.
 * The sector then
 *   - reads the kernel's real-mode part (boot sector and setup, `setup_sects` + 1 sectors)
 *     to 0x90000 and the command line to 0x9E000 (both below the EBDA; boot.rst, "Loading
 *     the rest of the kernel");
 *   - enables A20 and enters "unreal" mode (FS with a 4 GiB limit) so it can copy above 1 MiB;
 *   - reads the protected-mode kernel to 0x100000 and the initrd to `initrd_addr`, through a
 *     32 KiB buffer at 0x20000 (INT 13h AH=42h, LBA);
 *   - fills in the setup header's loader fields (type_of_loader, loadflags.CAN_USE_HEAP,
 *     heap_end_ptr, cmd_line_ptr, ramdisk_image, ramdisk_size) and jumps to the setup code at
 *     0x9020:0000 with every segment 0x9000 and the stack at its heap's end.
 * The kernel's own setup code does the rest (e820 from the BIOS, protected mode, 64-bit).
 * A failed disk read prints '!' and the BIOS status on the screen and halts; xtask's timeout
 * ends such a run.
 */
        .code16
        .section .text
        .globl  _start
_start:
        jmp     start
        .org    8
/* The parameter block (xtask fills it in; offsets are fixed: linux_native.rs). */
kernel_lba:     .long 0         /* 8: first sector of the bzImage */
setup_secs:     .word 0         /* 12: its real-mode part in sectors (setup_sects + 1) */
                .word 0         /* 14: padding */
pm_sectors:     .long 0         /* 16: its protected-mode part in sectors */
initrd_lba:     .long 0         /* 20 */
initrd_secs:    .long 0         /* 24 */
initrd_size:    .long 0         /* 28: bytes */
initrd_addr:    .long 0         /* 32: where it goes (physical) */
cmdline_lba:    .long 0         /* 36 */
cmdline_secs:   .word 0         /* 40: at most 8 (4 KiB, up to 0x9F000) */

        .equ    SETUP_SEG, 0x9000
        .equ    CMDLINE_OFF, 0xE000     /* 0x9E000: after setup, heap and stack */
        .equ    BUF_SEG, 0x2000         /* 0x20000: the bounce buffer */
        .equ    CHUNK, 64               /* sectors per read: 32 KiB */

start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        sti
        movb    %dl, drive

        /* Fast A20 (port 92h). */
        inb     $0x92, %al
        orb     $2, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        /* Unreal mode: FS keeps a flat 4 GiB limit after the switch back to real mode. */
        cli
        lgdtl   gdt_desc
        movl    %cr0, %eax
        orb     $1, %al
        movl    %eax, %cr0
        jmp     1f
1:      movw    $8, %bx
        movw    %bx, %fs
        andb    $0xfe, %al
        movl    %eax, %cr0
        jmp     2f
2:      xorw    %ax, %ax
        movw    %ax, %fs
        sti

        /* The real-mode part straight to 0x90000, the command line to 0x9E000. */
        movl    kernel_lba, %eax
        movw    setup_secs, %cx
        movw    $SETUP_SEG, %bx
        xorw    %di, %di
        call    read
        movl    cmdline_lba, %eax
        movw    cmdline_secs, %cx
        movw    $SETUP_SEG, %bx
        movw    $CMDLINE_OFF, %di
        call    read

        /* The protected-mode part to 1 MiB. */
        movl    kernel_lba, %eax
        movzwl  setup_secs, %ebx
        addl    %ebx, %eax
        movl    pm_sectors, %ecx
        movl    $0x100000, %edi
        call    load_high

        /* The initrd. */
        movl    initrd_lba, %eax
        movl    initrd_secs, %ecx
        movl    initrd_addr, %edi
        call    load_high

        /* The setup header's loader fields (offsets in the real-mode part). */
        movw    $SETUP_SEG, %ax
        movw    %ax, %es
        movb    $0xff, %es:0x210                /* type_of_loader: undefined */
        orb     $0x80, %es:0x211                /* loadflags: CAN_USE_HEAP */
        movw    $(CMDLINE_OFF - 0x200), %es:0x224 /* heap_end_ptr */
        movl    $(SETUP_SEG * 16 + CMDLINE_OFF), %es:0x228 /* cmd_line_ptr */
        movl    initrd_addr, %eax
        movl    %eax, %es:0x218                 /* ramdisk_image */
        movl    initrd_size, %eax
        movl    %eax, %es:0x21c                 /* ramdisk_size */

        cli
        movw    $SETUP_SEG, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movw    $CMDLINE_OFF, %sp
        ljmp    $(SETUP_SEG + 0x20), $0

/* Reads ECX sectors from LBA EAX to linear EDI (any address), CHUNK sectors at a time through
 * the buffer at 0x20000. */
load_high:
        jecxz   9f
        pushl   %ecx
        cmpl    $CHUNK, %ecx
        jbe     3f
        movl    $CHUNK, %ecx
3:      pushl   %eax
        pushl   %ecx
        pushl   %edi
        movw    $BUF_SEG, %bx
        xorw    %di, %di
        call    read
        popl    %edi
        popl    %ecx
        /* Copy ECX * 512 bytes from 0x20000 to EDI. */
        movl    %ecx, %edx
        shll    $7, %edx                        /* dwords */
        movl    $0x20000, %esi
4:      movl    %fs:(%esi), %ebx
        movl    %ebx, %fs:(%edi)
        addl    $4, %esi
        addl    $4, %edi
        decl    %edx
        jnz     4b
        popl    %eax
        addl    %ecx, %eax
        movl    %ecx, %edx
        popl    %ecx
        subl    %edx, %ecx
        jmp     load_high
9:      ret

/* Reads CX sectors (at most 127) from LBA EAX to BX:DI through INT 13h AH=42h. */
read:
        jcxz    6f
        movw    %cx, dap_count
        movw    %di, dap_off
        movw    %bx, dap_seg
        movl    %eax, dap_lba
        movw    $dap, %si
        movb    drive, %dl
        movb    $0x42, %ah
        int     $0x13
        jc      fail
6:      ret

fail:
        movb    %ah, %bl
        movw    $0x0e21, %ax                    /* '!' */
        int     $0x10
        movb    %bl, %al
        addb    $0x40, %al                      /* the status as a letter */
        movb    $0x0e, %ah
        int     $0x10
7:      hlt
        jmp     7b

        .p2align 2
dap:    .byte   0x10, 0
dap_count: .word 0
dap_off: .word 0
dap_seg: .word 0
dap_lba: .long 0, 0
drive:  .byte   0x80

        .p2align 3
gdt:    .quad   0
        .quad   0x00cf92000000ffff              /* flat 4 GiB data */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   gdt

        .org    510
        .byte   0x55, 0xaa
