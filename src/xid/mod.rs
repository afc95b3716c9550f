//! XIDs beyond NVML events: the catalog that says how bad each XID is and
//! what to do ([`catalog`]), and the kernel log (`/dev/kmsg`) where the
//! driver writes every XID, including those NVML events never deliver (79,
//! 119, 120) ([`kmsg`]).

pub mod catalog;
pub mod kmsg;
pub mod ledger;

/// A PCI address as the kernel and NVML write it: `0000:3b:00` (kernel,
/// without the function) or `00000000:3B:00.0` (NVML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddr {
    /// Parses `DOMAIN:BUS:DEVICE[.FUNCTION]`, any case, any domain width.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let s = s.trim();
        let s = s.split('.').next()?;
        let mut parts = s.split(':');
        let domain = u32::from_str_radix(parts.next()?, 16).ok()?;
        let bus = u8::from_str_radix(parts.next()?, 16).ok()?;
        let device = u8::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(PciAddr { domain, bus, device })
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}", self.domain, self.bus, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_nvml_addresses_compare_equal() {
        let k = PciAddr::parse("0000:3b:00").unwrap();
        let n = PciAddr::parse("00000000:3B:00.0").unwrap();
        assert_eq!(k, n);
        assert_eq!(k.to_string(), "0000:3b:00");
        assert_eq!(PciAddr::parse("0000:3b"), None);
        assert_eq!(PciAddr::parse("zz:00:00"), None);
    }
}
