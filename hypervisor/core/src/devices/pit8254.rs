//! The 8254 programmable interval timer of a PC (ports 0x40-0x43) and the system control port B
//! (0x61) that gates its channel 2, as far as operating systems probe them: Linux and others
//! program channel 2 in mode 0 and poll port B's OUT2 bit, or read the count back, to calibrate
//! the TSC. Counts run at 1.193182 MHz from the VM's clock (the `now_ns` the bus passes in);
//! binary counting only. Channel 0 counts too, but its IRQ 0 is not raised: guests here take
//! their timer interrupts from the local APIC.
//! Behaviour: Intel 82C54 datasheet (control word, modes 0-5, read-back command, status byte);
//! port B: the IBM PC/AT technical reference (bit 0 gate 2, bit 1 speaker, bit 4 refresh
//! toggle, bit 5 OUT2).

use super::bus::{Effects, PortDevice};

pub const PORT: u16 = 0x40;
pub const LEN: u16 = 4;
/// System control port B.
pub const PORT_B: u16 = 0x61;

/// The PIT's input clock.
pub const HZ: u64 = 1_193_182;

const NS_PER_S: u128 = 1_000_000_000;

/// Which bytes of the count a read or write moves (control word bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    /// LSB, then MSB.
    Word,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    mode: u8,
    access: Access,
    /// The control word as the status byte reports it (bits 5:0).
    control: u8,
    /// The count written (0 means 65536).
    initial: u32,
    /// A count was written and counting has begun (mode 0 OUT is low until it ends).
    armed: bool,
    /// Ticks counted before `since`, while the gate was high.
    counted: u64,
    /// When the gate last went high with the counter armed (None: not counting).
    since: Option<u64>,
    gate: bool,
    /// Half of an LSB-then-MSB count written.
    write_lsb: Option<u8>,
    /// The next read of an LSB-then-MSB value returns the MSB.
    read_msb_next: bool,
    /// A latched count, read out before the live count.
    latched: Option<u16>,
    /// A latched status byte, read before anything else.
    status: Option<u8>,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            access: Access::Word,
            control: 0x30,
            initial: 0x1_0000,
            armed: false,
            counted: 0,
            since: None,
            gate,
            write_lsb: None,
            read_msb_next: false,
            latched: None,
            status: None,
        }
    }

    fn ticks(&self, now_ns: u64) -> u64 {
        let running = self.since.map_or(0, |t| ticks_between(t, now_ns));
        self.counted + running
    }

    /// The counting element and OUT at `now_ns`.
    fn state(&self, now_ns: u64) -> (u16, bool) {
        if !self.armed {
            // Before a count is written the count is undefined; OUT is low in mode 0, high
            // in the others.
            return (0, self.mode != 0);
        }
        let n = self.initial as u64;
        let t = self.ticks(now_ns);
        match self.mode {
            // Interrupt on terminal count / one-shot: OUT goes high at zero and stays; the
            // counter keeps wrapping.
            0 | 1 => {
                let count = (n.wrapping_sub(t)) & 0xffff;
                let out = t >= n;
                (count as u16, if self.mode == 0 { out } else { out || t == 0 })
            }
            // Rate generator: n, n-1, ..., 1, reload; OUT low while the count is 1.
            2 => {
                let count = n - t % n;
                (count as u16, count != 1)
            }
            // Square wave: OUT high for the first half of each period, low for the second;
            // the count falls by 2 per tick in each half.
            3 => {
                let phase = t % n;
                let high = n.div_ceil(2);
                let (out, into) = if phase < high { (true, phase) } else { (false, phase - high) };
                let count = (n - 2 * into) & 0xfffe;
                (count as u16, out)
            }
            // Software / hardware triggered strobe: OUT low for the one tick at zero.
            _ => {
                let count = (n.wrapping_sub(t)) & 0xffff;
                (count as u16, t != n)
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now_ns: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        if !self.armed {
            return;
        }
        if gate {
            // Modes 1, 2, 3 and 5 restart on a rising gate; 0 and 4 resume.
            if matches!(self.mode, 1 | 2 | 3 | 5) {
                self.counted = 0;
            }
            self.since = Some(now_ns);
        } else {
            self.counted = self.ticks(now_ns);
            self.since = None;
        }
    }

    fn load(&mut self, count: u16, now_ns: u64) {
        self.initial = if count == 0 { 0x1_0000 } else { count as u32 };
        self.armed = true;
        self.counted = 0;
        self.since = self.gate.then_some(now_ns);
    }

    fn status_byte(&self, now_ns: u64) -> u8 {
        let (_, out) = self.state(now_ns);
        ((out as u8) << 7) | ((!self.armed as u8) << 6) | self.control
    }
}

fn ticks_between(from_ns: u64, to_ns: u64) -> u64 {
    (to_ns.saturating_sub(from_ns) as u128 * HZ as u128 / NS_PER_S) as u64
}

pub struct Pit {
    channels: [Channel; 3],
    /// Port B bits 1:0 (speaker data, gate 2) as written.
    port_b: u8,
}

impl Default for Pit {
    fn default() -> Self {
        // Gates 0 and 1 are tied high on a PC; gate 2 follows port B bit 0 (reset: low).
        Self { channels: [Channel::new(true), Channel::new(true), Channel::new(false)], port_b: 0 }
    }
}

impl Pit {
    fn control(&mut self, value: u8, now_ns: u64) {
        let select = value >> 6;
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status, bits 3:1
            // select channels 2..0.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x10 == 0 && c.status.is_none() {
                    c.status = Some(c.status_byte(now_ns));
                }
                if value & 0x20 == 0 && c.latched.is_none() {
                    c.latched = Some(c.state(now_ns).0);
                }
            }
            return;
        }
        let c = &mut self.channels[select as usize];
        let access = match (value >> 4) & 3 {
            0 => {
                // Counter latch command: the first one holds until read.
                if c.latched.is_none() {
                    c.latched = Some(c.state(now_ns).0);
                }
                return;
            }
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        let mode = (value >> 1) & 7;
        *c = Channel {
            mode: if mode >= 6 { mode - 4 } else { mode },
            access,
            control: value & 0x3f,
            gate: c.gate,
            ..Channel::new(c.gate)
        };
    }

    fn read_channel(&mut self, i: usize, now_ns: u64) -> u8 {
        let c = &mut self.channels[i];
        if let Some(s) = c.status.take() {
            return s;
        }
        let value = match c.latched {
            Some(v) => v,
            None => c.state(now_ns).0,
        };
        let (byte, done) = match c.access {
            Access::Lsb => (value as u8, true),
            Access::Msb => ((value >> 8) as u8, true),
            Access::Word if c.read_msb_next => ((value >> 8) as u8, true),
            Access::Word => (value as u8, false),
        };
        c.read_msb_next = !done;
        if done {
            c.latched = None;
        }
        byte
    }

    fn write_channel(&mut self, i: usize, byte: u8, now_ns: u64) {
        let c = &mut self.channels[i];
        match c.access {
            Access::Lsb => c.load(byte as u16, now_ns),
            Access::Msb => c.load((byte as u16) << 8, now_ns),
            Access::Word => match c.write_lsb.take() {
                Some(lsb) => c.load(u16::from_le_bytes([lsb, byte]), now_ns),
                None => {
                    c.write_lsb = Some(byte);
                    // Mode 0: writing the first byte stops the count (datasheet).
                    if c.mode == 0 {
                        c.armed = false;
                    }
                }
            },
        }
    }

    /// Port B as read: gate 2, speaker data, the refresh toggle (every 15.085 µs) and OUT2.
    fn port_b(&self, now_ns: u64) -> u8 {
        let refresh = (now_ns / 15_085) & 1 == 1;
        let out2 = self.channels[2].state(now_ns).1;
        (self.port_b & 3) | ((refresh as u8) << 4) | ((out2 as u8) << 5)
    }
}

impl PortDevice for Pit {
    fn name(&self) -> &'static str {
        "8254 PIT"
    }

    fn read(&mut self, offset: u16, _: u8, now_ns: u64) -> (u32, Effects) {
        let v = match offset {
            0..=2 => self.read_channel(offset as usize, now_ns),
            // The control register is write-only.
            _ => 0xff,
        };
        (v as u32, Effects::NONE)
    }

    fn write(&mut self, offset: u16, _: u8, value: u32, now_ns: u64) -> Effects {
        match offset {
            0..=2 => self.write_channel(offset as usize, value as u8, now_ns),
            _ => self.control(value as u8, now_ns),
        }
        Effects::NONE
    }
}

/// Port 0x61, a one-port device that shares the PIT's state: the bus holds it as a view.
pub struct PortB(pub alloc::sync::Arc<spin::Mutex<Pit>>);

impl PortDevice for PortB {
    fn name(&self) -> &'static str {
        "port B"
    }

    fn read(&mut self, _: u16, _: u8, now_ns: u64) -> (u32, Effects) {
        (self.0.lock().port_b(now_ns) as u32, Effects::NONE)
    }

    fn write(&mut self, _: u16, _: u8, value: u32, now_ns: u64) -> Effects {
        let mut pit = self.0.lock();
        pit.port_b = value as u8 & 3;
        pit.channels[2].set_gate(value & 1 != 0, now_ns);
        Effects::NONE
    }
}

/// The PIT's ports as a bus device sharing state with [`PortB`].
pub struct PitPorts(pub alloc::sync::Arc<spin::Mutex<Pit>>);

impl PortDevice for PitPorts {
    fn name(&self) -> &'static str {
        "8254 PIT"
    }

    fn read(&mut self, offset: u16, size: u8, now_ns: u64) -> (u32, Effects) {
        self.0.lock().read(offset, size, now_ns)
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, now_ns: u64) -> Effects {
        self.0.lock().write(offset, size, value, now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nanoseconds for `ticks` PIT ticks (rounded up, so at least that many have passed).
    fn ns(ticks: u64) -> u64 {
        (ticks as u128 * NS_PER_S).div_ceil(HZ as u128) as u64
    }

    fn read_word(p: &mut Pit, ch: u16, now: u64) -> u16 {
        let lo = p.read(ch, 1, now).0 as u8;
        let hi = p.read(ch, 1, now).0 as u8;
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn channel_2_mode_0_as_linux_calibrates_the_tsc() {
        // pit_calibrate_tsc: gate high, speaker off; channel 2, LSB/MSB, mode 0; count 0xffff
        // ... poll OUT2; here a count of 11932 (10 ms).
        let shared = alloc::sync::Arc::new(spin::Mutex::new(Pit::default()));
        let (mut pit, mut b) = (PitPorts(shared.clone()), PortB(shared));
        b.write(0, 1, 0x01, 0);
        pit.write(3, 1, 0xb0, 0);
        pit.write(2, 1, 11932 & 0xff, 1000);
        assert_eq!(b.read(0, 1, ns(5000)).0 & 0x20, 0, "OUT2 low while counting");
        pit.write(2, 1, 11932 >> 8, 1000);
        assert_eq!(b.read(0, 1, 1000 + ns(11931)).0 & 0x20, 0, "one tick before the end");
        assert_eq!(b.read(0, 1, 1000 + ns(11932)).0 & 0x21, 0x21, "OUT2 high at terminal count");
        assert_eq!(b.read(0, 1, 1000 + ns(50_000)).0 & 0x20, 0x20, "and stays high");
    }

    #[test]
    fn gate_low_holds_mode_0_and_rising_gate_resumes() {
        let mut p = Pit::default();
        p.write(3, 1, 0xb0, 0);
        p.write(2, 1, 0x00, 0);
        p.write(2, 1, 0x10, 0); // 4096, gate still low: not counting
        assert_eq!(read_word(&mut p, 2, ns(1000)), 4096);
        p.channels[2].set_gate(true, ns(1000));
        p.channels[2].set_gate(false, ns(1100));
        let held = read_word(&mut p, 2, ns(1100));
        assert!((4096 - 101..=4096 - 99).contains(&held), "about 100 ticks counted: {held}");
        assert_eq!(read_word(&mut p, 2, ns(9000)), held, "held while the gate is low");
        p.channels[2].set_gate(true, ns(9000));
        let resumed = read_word(&mut p, 2, ns(9050));
        assert!(held - resumed >= 49 && held - resumed <= 51, "mode 0 resumes, not restarts: {resumed}");
    }

    #[test]
    fn latch_holds_the_count_until_both_bytes_are_read() {
        let mut p = Pit::default();
        p.write(3, 1, 0x34, 0); // channel 0, LSB/MSB, mode 2
        p.write(0, 1, 0xe8, 0);
        p.write(0, 1, 0x03, 0); // 1000
        p.write(3, 1, 0x00, ns(10)); // latch channel 0
        assert_eq!(read_word(&mut p, 0, ns(500)), 990, "latched at tick 10");
        assert_eq!(read_word(&mut p, 0, ns(500)), 500, "live again after the latch is read");
        assert_eq!(read_word(&mut p, 0, ns(1999)), 1, "mode 2 reaches 1");
        assert_eq!(read_word(&mut p, 0, ns(2000)), 1000, "and reloads");
    }

    #[test]
    fn mode_3_square_wave_and_read_back_status() {
        let mut p = Pit::default();
        p.write(3, 1, 0x36, 0); // channel 0, LSB/MSB, mode 3
        p.write(0, 1, 100, 0);
        p.write(0, 1, 0, 0);
        p.write(3, 1, 0b1110_0010, ns(10)); // read-back: status of channel 0 only
        assert_eq!(p.read(0, 1, ns(10)).0, 0x80 | 0x36, "OUT high, count loaded, control word");
        assert_eq!(read_word(&mut p, 0, ns(10)), 80, "counts down by two");
        p.write(3, 1, 0b1110_0010, ns(60));
        assert_eq!(p.read(0, 1, ns(60)).0 & 0x80, 0, "OUT low in the second half");
    }

    #[test]
    fn lsb_only_and_msb_only_access() {
        let mut p = Pit::default();
        p.write(3, 1, 0x90, 0); // channel 2, LSB only, mode 0
        p.write(2, 1, 0x20, 0);
        p.channels[2].set_gate(true, 0);
        assert_eq!(p.read(2, 1, ns(0x10)).0, 0x10);
        p.write(3, 1, 0xa0, 0); // channel 2, MSB only
        p.write(2, 1, 0x01, 0);
        assert_eq!(p.read(2, 1, ns(0x80)).0, 0x00, "MSB of 0x100 - 0x80");
        assert_eq!(p.read(3, 1, 0).0, 0xff, "the control register is write-only");
    }
}
