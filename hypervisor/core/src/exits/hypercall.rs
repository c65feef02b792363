//! Decoding and checking hypercalls (ABI in `guest_abi::hypercall`). Bad arguments become
//! error returns for the guest, never a problem for the hypervisor.

use crate::guest_abi::hypercall::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Print { gpa: u64, len: u64 },
    Report { gpa: u64, len: u64 },
    Exit { code: u64 },
    ExitCounters { gpa: u64, count: u64 },
    PidOp { vcpu: u64, op: u64 },
    Unknown(u64),
}

/// Decodes RAX (number), RDI and RSI.
pub fn decode(rax: u64, rdi: u64, rsi: u64) -> Call {
    match rax {
        PRINT => Call::Print { gpa: rdi, len: rsi },
        REPORT => Call::Report { gpa: rdi, len: rsi },
        EXIT => Call::Exit { code: rdi },
        EXIT_COUNTERS => Call::ExitCounters { gpa: rdi, count: rsi },
        PID_OP => Call::PidOp { vcpu: rdi, op: rsi },
        n => Call::Unknown(n),
    }
}

impl Call {
    /// The registers (RAX, RDI, RSI) a guest sets to make this call, unused ones 0: the inverse
    /// of [`decode`], which the fuzz target holds it to.
    pub fn encode(self) -> (u64, u64, u64) {
        match self {
            Call::Print { gpa, len } => (PRINT, gpa, len),
            Call::Report { gpa, len } => (REPORT, gpa, len),
            Call::Exit { code } => (EXIT, code, 0),
            Call::ExitCounters { gpa, count } => (EXIT_COUNTERS, gpa, count),
            Call::PidOp { vcpu, op } => (PID_OP, vcpu, op),
            Call::Unknown(n) => (n, 0, 0),
        }
    }
}

/// Checks that `[gpa, gpa + len)` lies inside guest RAM and `len` is at most `max`.
pub fn check_buffer(gpa: u64, len: u64, max: u64, ram_size: u64) -> Result<core::ops::Range<usize>, i64> {
    if len > max {
        return Err(E_INVAL);
    }
    let end = gpa.checked_add(len).ok_or(E_FAULT)?;
    if end > ram_size {
        return Err(E_FAULT);
    }
    Ok(gpa as usize..end as usize)
}

/// Whether `bytes` is one well-formed JSON value (REPORT embeds it verbatim in HV-SUMMARY).
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_numbers() {
        assert_eq!(decode(PRINT, 0x1000, 5), Call::Print { gpa: 0x1000, len: 5 });
        assert_eq!(decode(EXIT, 1, 0), Call::Exit { code: 1 });
        assert_eq!(decode(PID_OP, 2, PID_SET_SN), Call::PidOp { vcpu: 2, op: PID_SET_SN });
        assert_eq!(decode(99, 0, 0), Call::Unknown(99));
    }

    #[test]
    fn encode_is_decodes_inverse() {
        for (rax, rdi, rsi) in [(PRINT, 0x1000, 5), (REPORT, 7, 8), (EXIT_COUNTERS, 1, 2), (PID_OP, 3, 4), (99, 0, 0)] {
            assert_eq!(decode(rax, rdi, rsi).encode(), (rax, rdi, rsi));
        }
        assert_eq!(decode(EXIT, 1, 0xdead).encode(), (EXIT, 1, 0), "EXIT takes no RSI");
    }

    #[test]
    fn buffers_must_lie_in_ram() {
        assert_eq!(check_buffer(0x1000, 16, MAX_LEN, 0x10000), Ok(0x1000..0x1010));
        assert_eq!(check_buffer(0xfff8, 16, MAX_LEN, 0x10000), Err(E_FAULT));
        assert_eq!(check_buffer(u64::MAX - 4, 16, MAX_LEN, 0x10000), Err(E_FAULT));
        assert_eq!(check_buffer(0, MAX_LEN + 1, MAX_LEN, 1 << 30), Err(E_INVAL));
    }

    #[test]
    fn json_reports_are_checked() {
        assert!(is_json(br#"{"vcpu": 1, "apic_id": 1}"#));
        assert!(is_json(b"[1, 2.5, null]"));
        assert!(!is_json(br#"{"vcpu": }"#));
        assert!(!is_json(b"{} {}"));
    }
}
