// A freestanding 64-bit guest that tests the VMM from the inside. The kernel command line
// picks what it does (`probe=<name>`); it reports over the COM1 UART and ends through the exit
// port with a status. Every vCPU enters at _start (64-bit boot protocol) or pvh_start (PVH,
// 32-bit, announced by a Xen ELF note, which is also how QEMU boots it); the bootstrap vCPU
// runs the probe, the others report their local APIC id and halt.
//
// Built with -mgeneral-regs-only and without SSE: the emulating KVM of the test machines runs
// every instruction in software and rejects XSAVE, INT3, CLAC/STAC and CMPXCHG16B.

#include <stddef.h>
#include <stdint.h>

asm(R"(
  .pushsection .text.entry, "ax"
  .globl _start
_start:                        /* 64-bit boot protocol: %rsi = zero page */
  xorl %edx, %edx
common_64:
  movl $0xfee00020, %eax      /* local APIC ID register; the id is in bits 31:24 */
  movl (%rax), %eax
  shrl $24, %eax
  leal 1(%rax), %ecx
  shll $12, %ecx
  movq $probe_stacks, %rsp
  addq %rcx, %rsp              /* a 4 KiB stack per APIC id */
  movq %rsi, %rdi
  movl %eax, %esi
  call probe_main
  movw $0x501, %dx
  outb %al, %dx
1:
  cli
  hlt
  jmp 1b

  .code32
pvh_start:                     /* PVH: 32-bit protected mode, no paging, %ebx = start info */
  movl %ebx, %esi
  lgdt pvh_gdt_descriptor
  movl %cr4, %eax
  orl $0x20, %eax              /* PAE */
  movl %eax, %cr4
  movl $pvh_pml4, %eax
  movl %eax, %cr3
  movl $0xc0000080, %ecx       /* EFER.LME */
  rdmsr
  orl $0x100, %eax
  wrmsr
  movl %cr0, %eax
  orl $0x80000001, %eax        /* PG, PE */
  movl %eax, %cr0
  ljmp $0x08, $pvh_64
  .code64
pvh_64:
  movw $0x10, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %ss
  movl %esi, %esi
  movl $1, %edx
  jmp common_64
  .popsection

  .pushsection .note.Xen, "a", @note
  .balign 4
  .long 4, 4, 18               /* name size, descriptor size, XEN_ELFNOTE_PHYS32_ENTRY */
  .asciz "Xen"
  .long pvh_start
  .balign 4
  .popsection

  .pushsection .data.pvh, "aw"
  .balign 8
pvh_gdt:
  .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff
pvh_gdt_descriptor:
  .word 23
  .long pvh_gdt
  .balign 4096
pvh_pml4:                      /* identity map of the low 4 GiB in 2 MiB pages */
  .quad pvh_pdpt + 3
  .fill 511, 8, 0
pvh_pdpt:
  .quad pvh_pd + 3, pvh_pd + 0x1003, pvh_pd + 0x2003, pvh_pd + 0x3003
  .fill 508, 8, 0
pvh_pd:
  .set page, 0
  .rept 2048
  .quad page + 0x83
  .set page, page + 0x200000
  .endr
  .popsection
)");


namespace {

constexpr uint16_t com1 = 0x3f8;
constexpr uint16_t exit_port = 0x501;

inline void outb(uint16_t port, uint8_t value) {
  asm volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}
inline uint8_t inb(uint16_t port) {
  uint8_t value;
  asm volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
  return value;
}
inline uint32_t inl(uint16_t port) {
  uint32_t value;
  asm volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
  return value;
}

void put(char c) {
  while ((inb(com1 + 5) & 0x20) == 0) {
  }
  outb(com1, static_cast<uint8_t>(c));
}
void print(const char* text) {
  while (*text != 0) {
    put(*text++);
  }
}
void print_hex(uint64_t value) {
  print("0x");
  bool started = false;
  for (int shift = 60; shift >= 0; shift -= 4) {
    const unsigned digit = (value >> shift) & 0xf;
    if (digit != 0 || started || shift == 0) {
      started = true;
      put(static_cast<char>(digit < 10 ? '0' + digit : 'a' + digit - 10));
    }
  }
}
void print_decimal(uint64_t value) {
  char digits[21];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  while (n > 0) {
    put(digits[--n]);
  }
}

template <typename T>
T read(const uint8_t* base, size_t offset) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    value |= static_cast<T>(static_cast<T>(base[offset + i]) << (8 * i));
  }
  return value;
}

size_t length(const char* text) {
  size_t n = 0;
  while (text[n] != 0) {
    ++n;
  }
  return n;
}

bool starts_with(const char* text, const char* prefix) {
  while (*prefix != 0) {
    if (*text++ != *prefix++) {
      return false;
    }
  }
  return true;
}

// The value of `key=` in the command line, or null; values end at a space.
const char* option(const char* cmdline, const char* key) {
  for (const char* p = cmdline; *p != 0; ++p) {
    if ((p == cmdline || p[-1] == ' ') && starts_with(p, key)) {
      return p + length(key);
    }
  }
  return nullptr;
}
bool is(const char* value, const char* word) {
  return value != nullptr && starts_with(value, word) &&
         (value[length(word)] == 0 || value[length(word)] == ' ');
}
uint64_t number(const char* value) {
  uint64_t result = 0;
  while (value != nullptr && *value >= '0' && *value <= '9') {
    result = result * 10 + static_cast<uint64_t>(*value++ - '0');
  }
  return result;
}

// --- several vCPUs --------------------------------------------------------------------------

volatile uint32_t print_lock = 0;
volatile uint32_t reported = 0;

void lock() {
  while (__atomic_exchange_n(&print_lock, 1u, __ATOMIC_ACQUIRE) != 0) {
  }
}
void unlock() { __atomic_store_n(&print_lock, 0u, __ATOMIC_RELEASE); }

void cpuid(uint32_t leaf, uint32_t& a, uint32_t& b, uint32_t& c, uint32_t& d) {
  asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(0));
}

// The local APIC's id, and the one CPUID leaf 1 reports for this vCPU.
void report_cpu(uint32_t apic_id) {
  uint32_t a, b, c, d;
  cpuid(1, a, b, c, d);
  lock();
  print("cpu ");
  print_decimal(apic_id);
  print(" cpuid ");
  print_decimal(b >> 24);
  put('\n');
  unlock();
  __atomic_fetch_add(&reported, 1u, __ATOMIC_ACQ_REL);
}

// --- interrupts -----------------------------------------------------------------------------

struct interrupt_frame;

volatile uint32_t irq4_count = 0;
volatile uint32_t irq5_count = 0;

__attribute__((interrupt)) void irq4_handler(interrupt_frame*) {
  inb(com1 + 2);      // IIR: reading it acknowledges the THRE interrupt
  outb(com1 + 1, 0);  // IER: no more interrupts
  irq4_count = irq4_count + 1;
  outb(0x20, 0x20);   // non-specific EOI to the master PIC
}

__attribute__((interrupt)) void irq5_handler(interrupt_frame*) {
  irq5_count = irq5_count + 1;
  outb(0x20, 0x20);
}

struct [[gnu::packed]] idt_gate {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type;
  uint16_t offset_middle;
  uint32_t offset_high;
  uint32_t reserved;
};
idt_gate idt[64];

void set_gate(unsigned vector, void (*handler)(interrupt_frame*)) {
  const auto address = reinterpret_cast<uint64_t>(handler);
  uint16_t cs;
  asm volatile("mov %%cs, %0" : "=r"(cs));
  idt[vector] = {static_cast<uint16_t>(address), cs, 0, 0x8e,
                 static_cast<uint16_t>(address >> 16), static_cast<uint32_t>(address >> 32), 0};
}

void load_idt(const void* base, uint16_t limit) {
  struct [[gnu::packed]] {
    uint16_t limit;
    uint64_t base;
  } descriptor{limit, reinterpret_cast<uint64_t>(base)};
  asm volatile("lidt %0" : : "m"(descriptor));
}

// 8259A initialisation (ICW1-ICW4): vectors 0x20-0x2f, all lines masked except `unmasked`.
void program_pic(uint8_t master_mask) {
  outb(0x20, 0x11);
  outb(0xa0, 0x11);
  outb(0x21, 0x20);
  outb(0xa1, 0x28);
  outb(0x21, 0x04);
  outb(0xa1, 0x02);
  outb(0x21, 0x01);
  outb(0xa1, 0x01);
  outb(0x21, master_mask);
  outb(0xa1, 0xff);
}

bool wait_for(volatile uint32_t& counter) {
  for (uint32_t spins = 0; spins < 200000; ++spins) {
    asm volatile("sti; hlt; cli");
    if (counter != 0) {
      return true;
    }
  }
  return false;
}

int probe_irq() {
  set_gate(0x24, irq4_handler);
  set_gate(0x25, irq5_handler);
  load_idt(idt, sizeof idt - 1);
  program_pic(static_cast<uint8_t>(~((1u << 4) | (1u << 5))));

  outb(com1 + 4, 0x08); // MCR.OUT2 connects the UART's interrupt to the PIC
  outb(com1 + 1, 0x02); // IER.ETBEI: the empty transmitter raises IRQ 4 at once
  if (!wait_for(irq4_count)) {
    print("irq4 missing\n");
    return 1;
  }
  print("irq4 ");
  print_decimal(irq4_count);
  print("\nready for irq5\n");
  if (!wait_for(irq5_count)) {
    print("irq5 missing\n");
    return 2;
  }
  print("irq5 ");
  print_decimal(irq5_count);
  put('\n');
  return 0;
}

// The local APIC's timer in TSC-deadline mode (Intel SDM vol. 3A 11.5.4.1), which the VMM
// offers in CPUID where KVM emulates it: armed a million TSC ticks ahead, it must interrupt.
constexpr uint64_t lapic_base = 0xfee00000;
constexpr uint32_t lapic_eoi = 0xb0, lapic_spurious = 0xf0, lapic_timer_lvt = 0x320;
constexpr uint32_t ia32_tsc_deadline = 0x6e0;
constexpr uint8_t timer_vector = 0x30;
volatile uint32_t timer_count = 0;

void lapic_write(uint32_t reg, uint32_t value) {
  *reinterpret_cast<volatile uint32_t*>(lapic_base + reg) = value;
}

uint64_t read_tsc() {
  uint32_t low, high;
  asm volatile("rdtsc" : "=a"(low), "=d"(high));
  return (uint64_t{high} << 32) | low;
}

void write_msr(uint32_t msr, uint64_t value) {
  asm volatile("wrmsr"
               :
               : "c"(msr), "a"(static_cast<uint32_t>(value)),
                 "d"(static_cast<uint32_t>(value >> 32)));
}

__attribute__((interrupt)) void timer_handler(interrupt_frame*) {
  timer_count = timer_count + 1;
  lapic_write(lapic_eoi, 0);
}

int probe_tsc_deadline() {
  uint32_t a, b, c, d;
  cpuid(1, a, b, c, d);
  if (((c >> 24) & 1) == 0) {
    print("no tsc-deadline in cpuid\n");
    return 1;
  }
  set_gate(timer_vector, timer_handler);
  load_idt(idt, sizeof idt - 1);
  program_pic(0xff);                          // the PIC stays quiet
  lapic_write(lapic_spurious, 0x100 | 0xff);  // software-enable the APIC
  lapic_write(lapic_timer_lvt, (2u << 17) | timer_vector);
  write_msr(ia32_tsc_deadline, read_tsc() + 1000000);
  if (!wait_for(timer_count)) {
    print("tsc-deadline timer never fired\n");
    return 2;
  }
  print("tsc-deadline timer fired\n");
  return 0;
}

// --- the UART from the guest's side ---------------------------------------------------------

int probe_serial() {
  outb(com1 + 3, 0x80); // DLAB
  outb(com1 + 0, 0x01); // 115200 baud
  outb(com1 + 1, 0x00);
  if (inb(com1 + 0) != 0x01 || inb(com1 + 1) != 0x00) {
    return 1;
  }
  outb(com1 + 3, 0x03); // 8N1, DLAB off
  outb(com1 + 7, 0x5a);
  if (inb(com1 + 7) != 0x5a) {
    return 2;
  }
  // Linux's 8250 probe: in loopback, MSR's upper nibble mirrors MCR's outputs.
  outb(com1 + 4, 0x10 | 0x0a);
  if ((inb(com1 + 6) & 0xf0) != 0x90) {
    return 3;
  }
  outb(com1 + 0, 'L');
  if ((inb(com1 + 5) & 0x01) == 0 || inb(com1 + 0) != 'L') {
    return 4;
  }
  outb(com1 + 4, 0x03);
  outb(com1 + 2, 0x07); // enable and clear the FIFOs
  if ((inb(com1 + 2) & 0xc0) != 0xc0) {
    return 5;
  }
  print("serial ok\n");
  return 0;
}

// --- what the VMM handed over ---------------------------------------------------------------

// The boot information of either entry: the zero page of the 64-bit boot protocol
// (Documentation/x86/zero-page.rst) or the PVH start info (Xen's
// xen/include/public/arch-x86/hvm/start_info.h).
struct boot_info {
  const uint8_t* base;
  bool pvh;

  const char* cmdline() const {
    const uint64_t address = pvh ? read<uint64_t>(base, 0x18) : read<uint32_t>(base, 0x228);
    return reinterpret_cast<const char*>(address);
  }
  unsigned memory_map_entries() const { return pvh ? read<uint32_t>(base, 0x30) : base[0x1e8]; }
  const uint8_t* memory_map_entry(unsigned i) const {
    if (pvh) {
      return reinterpret_cast<const uint8_t*>(read<uint64_t>(base, 0x28)) + i * 24;
    }
    return base + 0x2d0 + i * 20;
  }
  uint64_t initrd_address() const {
    if (pvh) {
      return read<uint32_t>(base, 0x0c) == 0
                 ? 0
                 : read<uint64_t>(reinterpret_cast<const uint8_t*>(read<uint64_t>(base, 0x10)), 0);
    }
    return read<uint32_t>(base, 0x218);
  }
  uint64_t initrd_size() const {
    if (pvh) {
      return read<uint32_t>(base, 0x0c) == 0
                 ? 0
                 : read<uint64_t>(reinterpret_cast<const uint8_t*>(read<uint64_t>(base, 0x10)), 8);
    }
    return read<uint32_t>(base, 0x21c);
  }
};

int probe_boot(const boot_info& info) {
  print(info.pvh ? "entry pvh\n" : "entry 64-bit\n");
  for (unsigned i = 0; i < info.memory_map_entries(); ++i) {
    const uint8_t* entry = info.memory_map_entry(i);
    print("e820 ");
    print_hex(read<uint64_t>(entry, 0));
    put(' ');
    print_hex(read<uint64_t>(entry, 8));
    put(' ');
    print_decimal(read<uint32_t>(entry, 16));
    put('\n');
  }
  print("cmdline ");
  print(info.cmdline());
  put('\n');

  const uint64_t initrd = info.initrd_address();
  const uint64_t size = info.initrd_size();
  uint32_t hash = 2166136261u; // FNV-1a
  for (uint64_t i = 0; i < size; ++i) {
    hash = (hash ^ reinterpret_cast<const volatile uint8_t*>(initrd)[i]) * 16777619u;
  }
  print("initrd ");
  print_hex(initrd);
  put(' ');
  print_decimal(size);
  put(' ');
  print_hex(hash);
  put('\n');
  return 0;
}

// --- misbehaviour ---------------------------------------------------------------------------

int probe_unknown_port() {
  outb(0x1234, 0x42);
  const bool ok = inb(0x1234) == 0xff && inl(0x1238) == 0xffffffffu;
  return ok ? 0 : 1;
}

int probe_unmapped_mmio() {
  auto* hole = reinterpret_cast<volatile uint32_t*>(0xe0000000ull);
  hole[0] = 0x12345678;
  return hole[1] == 0xffffffffu ? 0 : 1;
}

[[noreturn]] void probe_triple_fault() {
  load_idt(nullptr, 0); // no gate for any exception: #UD -> #GP -> double fault -> shutdown
  asm volatile("ud2");
  __builtin_unreachable();
}

[[noreturn]] void halt_forever() {
  for (;;) {
    asm volatile("cli; hlt");
  }
}

// --- virtio-blk from the driver's side (virtio 1.2, 4.2.3 and 5.2) ----------------------------

uint64_t hex_number(const char* value) {
  uint64_t result = 0;
  if (value != nullptr && value[0] == '0' && value[1] == 'x') {
    value += 2;
  }
  for (; value != nullptr; ++value) {
    const char c = *value;
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) {
      break;
    }
    result = result * 16 + static_cast<uint64_t>(digit);
  }
  return result;
}

// The first `virtio_mmio.device=<size>@<base>:<irq>` entry the VMM put on the command line.
uint64_t virtio_base(const char* cmdline) {
  const char* entry = option(cmdline, "virtio_mmio.device=");
  while (entry != nullptr && *entry != 0 && *entry != '@') {
    ++entry;
  }
  return entry != nullptr && *entry == '@' ? hex_number(entry + 1) : 0;
}

struct [[gnu::packed]] virtq_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

constexpr uint16_t blk_queue_size = 8;

struct blk_queue {
  alignas(4096) virtq_desc desc[blk_queue_size];
  alignas(4096) volatile uint16_t avail[2 + blk_queue_size + 1];
  alignas(4096) volatile uint16_t used[2 + 4 * blk_queue_size + 1];
  alignas(16) uint8_t header[16];
  alignas(512) uint8_t data[512];
  volatile uint8_t status;
};
blk_queue blk;
uint64_t virtio_window = 0;
volatile uint32_t virtio_irq_count = 0;

volatile uint32_t& virtio_register(uint32_t offset) {
  return *reinterpret_cast<volatile uint32_t*>(virtio_window + offset);
}

__attribute__((interrupt)) void virtio_irq_handler(interrupt_frame*) {
  const uint32_t pending = virtio_register(0x060); // InterruptStatus
  virtio_register(0x064) = pending;                // InterruptACK
  virtio_irq_count = virtio_irq_count + 1;
  outb(0x20, 0x20);
}

// Feature negotiation (VERSION_1 only) and queue 0, as 3.1.1 orders the steps.
bool blk_initialise() {
  if (virtio_register(0x000) != 0x74726976 || virtio_register(0x004) != 2 ||
      virtio_register(0x008) != 2) {
    return false;
  }
  virtio_register(0x070) = 0;
  virtio_register(0x070) = 1 | 2; // ACKNOWLEDGE, DRIVER
  virtio_register(0x024) = 0;     // DriverFeaturesSel
  virtio_register(0x020) = 0;
  virtio_register(0x024) = 1;
  virtio_register(0x020) = 1; // VERSION_1 (bit 32)
  virtio_register(0x070) = 1 | 2 | 8;
  if ((virtio_register(0x070) & 8) == 0) {
    return false;
  }
  virtio_register(0x030) = 0; // QueueSel
  if (virtio_register(0x034) < blk_queue_size) {
    return false;
  }
  virtio_register(0x038) = blk_queue_size;
  const auto address = [](const volatile void* p) { return reinterpret_cast<uint64_t>(p); };
  virtio_register(0x080) = static_cast<uint32_t>(address(blk.desc));
  virtio_register(0x084) = static_cast<uint32_t>(address(blk.desc) >> 32);
  virtio_register(0x090) = static_cast<uint32_t>(address(blk.avail));
  virtio_register(0x094) = static_cast<uint32_t>(address(blk.avail) >> 32);
  virtio_register(0x0a0) = static_cast<uint32_t>(address(blk.used));
  virtio_register(0x0a4) = static_cast<uint32_t>(address(blk.used) >> 32);
  virtio_register(0x044) = 1; // QueueReady
  if (virtio_register(0x044) != 1) {
    return false;
  }
  virtio_register(0x070) = 1 | 2 | 8 | 4; // DRIVER_OK
  return true;
}

// One request: header, then 512 data bytes unless it is a flush, then the status byte.
// Returns the status, or 0xee when the device did not answer.
uint8_t blk_request(uint32_t type, uint64_t sector) {
  const uint32_t header[4] = {type, 0, static_cast<uint32_t>(sector),
                              static_cast<uint32_t>(sector >> 32)};
  for (unsigned i = 0; i < 16; ++i) {
    blk.header[i] = reinterpret_cast<const uint8_t*>(header)[i];
  }
  const bool flush = type == 4;
  const uint16_t next = 1, write = 2;
  blk.desc[0] = {reinterpret_cast<uint64_t>(blk.header), 16, next,
                 static_cast<uint16_t>(flush ? 2 : 1)};
  blk.desc[1] = {reinterpret_cast<uint64_t>(blk.data), 512,
                 static_cast<uint16_t>(next | (type == 0 ? write : 0)), 2};
  blk.desc[2] = {reinterpret_cast<uint64_t>(&blk.status), 1, write, 0};
  blk.status = 0xee;

  const uint16_t index = blk.avail[1];
  blk.avail[2 + index % blk_queue_size] = 0;
  asm volatile("mfence" ::: "memory");
  blk.avail[1] = static_cast<uint16_t>(index + 1);
  asm volatile("mfence" ::: "memory");
  virtio_register(0x050) = 0; // QueueNotify

  asm volatile("sti");
  for (uint32_t spins = 0; spins < 3000000 && blk.used[1] == index; ++spins) {
    asm volatile("pause");
  }
  asm volatile("cli");
  return blk.status;
}

int probe_virtio_blk(const char* cmdline) {
  virtio_window = virtio_base(cmdline);
  set_gate(0x25, virtio_irq_handler);
  load_idt(idt, sizeof idt - 1);
  program_pic(static_cast<uint8_t>(~(1u << 5)));
  if (virtio_window == 0 || !blk_initialise()) {
    print("blk set-up failed\n");
    return 1;
  }
  print("blk ready\n");

  const uint8_t read_status = blk_request(0, 0);
  uint32_t hash = 2166136261u;
  for (const uint8_t byte : blk.data) {
    hash = (hash ^ byte) * 16777619u;
  }
  print("blk read ");
  print_decimal(read_status);
  put(' ');
  print_hex(hash);
  put('\n');

  static const char pattern[] = "written by the probe ";
  for (unsigned i = 0; i < 512; ++i) {
    blk.data[i] = static_cast<uint8_t>(pattern[i % (sizeof pattern - 1)]);
  }
  print("blk write ");
  print_decimal(blk_request(1, 1));
  print("\nblk flush ");
  print_decimal(blk_request(4, 0));
  print("\nblk beyond ");
  print_decimal(blk_request(0, 1ull << 40));
  // A completion interrupt may still be on its way (irqfd injects it asynchronously) or held
  // in the PIC while interrupts were off: give it time with interrupts on.
  asm volatile("sti");
  for (uint32_t spins = 0; spins < 3000000 && virtio_irq_count == 0; ++spins) {
    asm volatile("pause");
  }
  asm volatile("cli");
  print("\nblk irqs ");
  print_decimal(virtio_irq_count > 0 ? 1 : 0);
  put('\n');
  return 0;
}

// --- virtio-net from the driver's side (virtio 1.2, 5.1) ------------------------------------

constexpr uint16_t net_queue_size = 8;
constexpr uint32_t net_buffer_size = 2048;

struct net_queue {
  alignas(4096) virtq_desc desc[net_queue_size];
  alignas(4096) volatile uint16_t avail[2 + net_queue_size + 1];
  alignas(4096) volatile uint16_t used[2 + 4 * net_queue_size + 1];
};
net_queue net_rx;
net_queue net_tx;
alignas(4096) uint8_t net_buffers[net_queue_size][net_buffer_size];
alignas(16) uint8_t net_frame[128];

void net_set_up_queue(uint32_t index, net_queue& queue) {
  const auto address = [](const volatile void* p) { return reinterpret_cast<uint64_t>(p); };
  virtio_register(0x030) = index;
  virtio_register(0x038) = net_queue_size;
  virtio_register(0x080) = static_cast<uint32_t>(address(queue.desc));
  virtio_register(0x084) = static_cast<uint32_t>(address(queue.desc) >> 32);
  virtio_register(0x090) = static_cast<uint32_t>(address(queue.avail));
  virtio_register(0x094) = static_cast<uint32_t>(address(queue.avail) >> 32);
  virtio_register(0x0a0) = static_cast<uint32_t>(address(queue.used));
  virtio_register(0x0a4) = static_cast<uint32_t>(address(queue.used) >> 32);
  virtio_register(0x044) = 1;
}

void net_publish(net_queue& queue, uint16_t head) {
  const uint16_t index = queue.avail[1];
  queue.avail[2 + index % net_queue_size] = head;
  asm volatile("mfence" ::: "memory");
  queue.avail[1] = static_cast<uint16_t>(index + 1);
  asm volatile("mfence" ::: "memory");
}

bool net_wait_used(net_queue& queue, uint16_t seen) {
  for (uint32_t spins = 0; spins < 20000000; ++spins) {
    if (queue.used[1] != seen) {
      return true;
    }
    asm volatile("pause");
  }
  return false;
}

// Sends one frame of EtherType 0x88b5 to the broadcast address, then waits for a frame of the
// same type from the host and prints its payload.
int probe_virtio_net(const char* cmdline) {
  virtio_window = virtio_base(cmdline);
  if (virtio_window == 0 || virtio_register(0x000) != 0x74726976 ||
      virtio_register(0x008) != 1) {
    print("net: no virtio-net device\n");
    return 1;
  }
  virtio_register(0x070) = 0;
  virtio_register(0x070) = 1 | 2;
  virtio_register(0x024) = 0;
  virtio_register(0x020) = 1u << 5; // VIRTIO_NET_F_MAC
  virtio_register(0x024) = 1;
  virtio_register(0x020) = 1; // VERSION_1
  virtio_register(0x070) = 1 | 2 | 8;
  if ((virtio_register(0x070) & 8) == 0) {
    print("net: features refused\n");
    return 1;
  }
  net_set_up_queue(0, net_rx);
  net_set_up_queue(1, net_tx);
  for (uint16_t i = 0; i < net_queue_size; ++i) {
    net_rx.desc[i] = {reinterpret_cast<uint64_t>(net_buffers[i]), net_buffer_size, 2, 0};
    net_publish(net_rx, i);
  }
  virtio_register(0x070) = 1 | 2 | 8 | 4;
  virtio_register(0x050) = 0; // receive buffers are there

  // The frame: a 12-byte virtio-net header of zeros, then Ethernet.
  static const char payload[] = "probe says hello";
  for (auto& byte : net_frame) {
    byte = 0;
  }
  uint8_t* ethernet = net_frame + 12;
  for (int i = 0; i < 6; ++i) {
    ethernet[i] = 0xff;
    ethernet[6 + i] = *reinterpret_cast<volatile uint8_t*>(virtio_window + 0x100 + i);
  }
  ethernet[12] = 0x88;
  ethernet[13] = 0xb5;
  for (unsigned i = 0; i < sizeof payload - 1; ++i) {
    ethernet[14 + i] = static_cast<uint8_t>(payload[i]);
  }
  net_tx.desc[0] = {reinterpret_cast<uint64_t>(net_frame), 12 + 60, 0, 0};
  const uint16_t tx_seen = net_tx.used[1];
  net_publish(net_tx, 0);
  virtio_register(0x050) = 1;
  if (!net_wait_used(net_tx, tx_seen)) {
    print("net: frame not sent\n");
    return 2;
  }
  print("net tx done\n");

  // Frames of other types (the host's neighbour discovery) are handed back and skipped.
  uint16_t rx_seen = 0;
  for (int frames = 0; frames < 64; ++frames) {
    if (!net_wait_used(net_rx, rx_seen)) {
      print("net: nothing received\n");
      return 3;
    }
    const uint32_t slot = rx_seen % net_queue_size;
    const uint32_t id = net_rx.used[2 + 2 * slot];
    ++rx_seen;
    const uint8_t* received = net_buffers[id % net_queue_size] + 12;
    if (received[12] == 0x88 && received[13] == 0xb5) {
      print("net rx ");
      for (int i = 14; i < 14 + 40 && received[i] >= ' '; ++i) {
        put(static_cast<char>(received[i]));
      }
      put('\n');
      return 0;
    }
    net_publish(net_rx, static_cast<uint16_t>(id));
    virtio_register(0x050) = 0;
  }
  return 4;
}

} // namespace

extern "C" {

alignas(16) uint8_t probe_stacks[33 * 4096];

int probe_main(const uint8_t* boot_information, uint32_t apic_id, uint32_t pvh) {
  if (apic_id != 0) {
    report_cpu(apic_id);
    halt_forever();
  }
  const boot_info info{boot_information, pvh != 0};
  const char* cmdline = info.cmdline();
  const char* name = option(cmdline, "probe=");

  if (is(name, "boot")) {
    return probe_boot(info);
  }
  if (is(name, "exit")) {
    return static_cast<int>(number(option(cmdline, "status=")));
  }
  if (is(name, "serial")) {
    return probe_serial();
  }
  if (is(name, "irq")) {
    return probe_irq();
  }
  if (is(name, "reset")) {
    outb(0x64, 0xfe);
    halt_forever();
  }
  if (is(name, "smp")) {
    const uint64_t cpus = number(option(cmdline, "cpus="));
    report_cpu(apic_id);
    while (reported < cpus) {
    }
    return 0;
  }
  if (is(name, "cpuid")) {
    uint32_t a, b, c, d;
    cpuid(0x40000000, a, b, c, d);
    const uint32_t signature[4] = {b, c, d, 0};
    print("hypervisor ");
    print(reinterpret_cast<const char*>(signature));
    cpuid(1, a, b, c, d);
    print(c >> 31 ? " flag" : " no-flag");
    print((c >> 24) & 1 ? " tsc-deadline\n" : " no-tsc-deadline\n");
    return 0;
  }
  if (is(name, "tsc-deadline")) {
    return probe_tsc_deadline();
  }
  if (is(name, "string-io")) {
    // One OUTSB exit with a count above one: the VMM must hand each byte to the device.
    static const char text[] = "rep outsb ok\n";
    const char* source = text;
    size_t count = sizeof text - 1;
    asm volatile("rep outsb" : "+S"(source), "+c"(count) : "d"(com1) : "memory");
    return 0;
  }
  if (is(name, "unknown-port")) {
    return probe_unknown_port();
  }
  if (is(name, "unmapped-mmio")) {
    return probe_unmapped_mmio();
  }
  if (is(name, "triple-fault")) {
    probe_triple_fault();
  }
  if (is(name, "virtio-net")) {
    return probe_virtio_net(cmdline);
  }
  if (is(name, "virtio-blk")) {
    return probe_virtio_blk(cmdline);
  }
  if (is(name, "hang")) {
    halt_forever();
  }
  print("unknown probe\n");
  return 99;
}

} // extern "C"
