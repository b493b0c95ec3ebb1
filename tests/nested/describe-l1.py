#!/usr/bin/env python3
"""Says where L1's vCPUs are, for nested-run.sh when L1 stops responding.

Asks QEMU's human monitor (a Unix socket) for every vCPU's registers and prints one line per
vCPU: its instruction pointer named as function+offset, whether it is halted or takes
interrupts, and its CR3. Then the kernel-text addresses found in the 64 words above its stack
pointer, named the same way: a rough call chain.

Both L1 (Debian's cloud kernel, booted with nokaslr) and a Linux guest of L1's KVM (the
bundled kernel) put their text at 0xffffffff81000000, and QEMU's monitor shows a vCPU that runs
such a guest with the guest's registers. So an address is named in each kernel whose symbols
were given ("L1 __schedule+0x2ab | guest foo+0x10"); the CR3, which differs between them,
tells which is meant.

It samples three times, a second apart: a vCPU whose address never moves is stuck there, one
whose address moves is spinning.

Usage: describe-l1.py MONITOR_SOCKET L1_SYMBOLS [GUEST_SYMBOLS [DUMP_FILE]]
  *_SYMBOLS   lines of "ADDRESS TYPE NAME", as System.map, nm or /proc/kallsyms print them;
              a missing file leaves addresses unnamed in that kernel
  DUMP_FILE   also write the monitor's whole answers there (registers, stacks, local APICs)
"""
import bisect
import re
import socket
import sys
import time

TEXT_START, TEXT_END = 0xFFFFFFFF80000000, 0xFFFFFFFFC0000000
STACK_WORDS = 64


def ask_monitor(path, commands):
    """Sends each HMP command; returns the text that came back before each next prompt."""
    prompt = b"(qemu) "
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(10)
    connection.connect(path)
    buffer = b""

    def read_to_prompt():
        nonlocal buffer
        while prompt not in buffer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            buffer += chunk
        text, _, buffer = buffer.partition(prompt)
        # The first line is the monitor's echo of the command, typed out with cursor moves.
        return text.decode(errors="replace").partition("\n")[2]

    read_to_prompt()  # the banner
    replies = []
    for command in commands:
        connection.sendall(command.encode() + b"\n")
        replies.append(read_to_prompt())
    connection.close()
    return replies


class symbol_table:
    def __init__(self, label, path):
        self.label = label
        pairs = []
        try:
            with open(path) as symbols:
                for line in symbols:
                    fields = line.split()
                    if len(fields) >= 3 and fields[1] in "tTwW":
                        pairs.append((int(fields[0], 16), fields[2]))
        except (OSError, ValueError):
            pass  # not captured (yet): addresses stay unnamed in this kernel
        pairs.sort()
        self.addresses = [address for address, _ in pairs]
        self.names = [name for _, name in pairs]

    def name(self, address):
        index = bisect.bisect_right(self.addresses, address) - 1
        if index < 0 or address - self.addresses[index] > 0x10000:
            return None
        return f"{self.names[index]}+{address - self.addresses[index]:#x}"


def name_address(address, tables):
    names = [f"{table.label} {name}" for table in tables if (name := table.name(address))]
    return " | ".join(names) if names else "unnamed"


def parse_cpus(registers):
    cpus = []
    for block in re.split(r"(?m)^(?=CPU#\d+)", registers):
        cpu = re.match(r"CPU#(\d+)", block)
        fields = dict(re.findall(r"\b(RIP|RSP|RFL|CR3|HLT)=([0-9a-f]+)", block))
        if cpu and "RIP" in fields:
            cpus.append((cpu.group(1), fields))
    return cpus


def stack_text_addresses(dump):
    """The words of an `x/Ngx` answer ("ADDRESS: 0xWORD 0xWORD" lines) that point into text."""
    words = []
    for line in dump.splitlines():
        address, colon, values = line.partition(": ")
        if colon and re.fullmatch(r"[0-9a-f]+", address.strip()):
            words += [int(value, 16) for value in re.findall(r"0x([0-9a-f]+)", values)]
    return [word for word in words if TEXT_START <= word < TEXT_END]


def describe_sample(sample, monitor, tables, dump):
    (registers,) = ask_monitor(monitor, ["info registers -a"])
    cpus = parse_cpus(registers)
    commands = []
    for number, fields in cpus:
        commands += [f"cpu {number}", f"x/{STACK_WORDS}gx 0x{fields['RSP']}", "info lapic"]
    replies = ask_monitor(monitor, commands) if commands else []
    if dump:
        dump.write(f"=== sample {sample}\n{registers}\n")

    for position, (number, fields) in enumerate(cpus):
        stack, apic = replies[3 * position + 1], replies[3 * position + 2]
        rip = int(fields["RIP"], 16)
        interrupts = "on" if int(fields.get("RFL", "0"), 16) & 0x200 else "off"
        print(f"nested-run: sample {sample}, L1 vCPU {number}: {name_address(rip, tables)} "
              f"RIP={rip:#x} halted={fields.get('HLT', '?')} interrupts={interrupts} "
              f"CR3={fields.get('CR3', '?')}")
        chain = [name_address(a, tables) for a in stack_text_addresses(stack)]
        if chain:
            print(f"nested-run:   on its stack: {'; '.join(chain[:12])}")
        if dump:
            dump.write(f"=== stack of CPU#{number}\n{stack}\n=== local APIC of CPU#{number}\n"
                       f"{apic}\n")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    monitor = sys.argv[1]
    tables = [symbol_table("L1", sys.argv[2])]
    if len(sys.argv) > 3:
        tables.append(symbol_table("guest", sys.argv[3]))
    dump = open(sys.argv[4], "a") if len(sys.argv) > 4 else None
    for sample in range(1, 4):
        if sample > 1:
            time.sleep(1)
        describe_sample(sample, monitor, tables, dump)


if __name__ == "__main__":
    try:
        main()
    except (OSError, IndexError) as error:
        print(f"nested-run: could not ask QEMU's monitor where L1 is: {error}")
