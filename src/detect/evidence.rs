//! The last matching lines of a jail, kept for decisions' evidence.
//!
//! A fixed ring per jail rather than lines per key: memory does not grow with
//! tracked keys, and slots reuse their buffers, so recording allocates nothing
//! once the ring is warm. Under a flood the ring turns over fast and a
//! decision may carry only its last few lines; that is the honest trade.

use super::{Evidence, Origin};

#[derive(Debug, Default)]
struct Slot {
    key: Vec<u8>,
    origin: Origin,
    client: Option<std::net::IpAddr>,
    /// As read: made text (lossily) only for a decision's evidence.
    line: Vec<u8>,
    /// The second it was counted in.
    sec: u32,
    used: bool,
}

#[derive(Debug)]
pub struct EvidenceRing {
    slots: Vec<Slot>,
    next: usize,
}

impl EvidenceRing {
    pub fn new(size: usize) -> EvidenceRing {
        EvidenceRing {
            slots: (0..size).map(|_| Slot::default()).collect(),
            next: 0,
        }
    }

    pub fn record(
        &mut self,
        key: &[u8],
        sec: u32,
        origin: Origin,
        client: Option<std::net::IpAddr>,
        line: &[u8],
    ) {
        let slot = &mut self.slots[self.next];
        slot.client = client;
        slot.key.clear();
        slot.key.extend_from_slice(key);
        slot.line.clear();
        slot.line.extend_from_slice(line);
        slot.origin = origin;
        slot.sec = sec;
        slot.used = true;
        self.next = (self.next + 1) % self.slots.len();
    }

    /// Up to `max` most recent lines of `key` counted in second `since` or
    /// later (the window that fired: older lines, left over from before an
    /// earlier decision took its own, are no evidence of this one), oldest
    /// first; they are removed.
    pub fn take_for(&mut self, key: &[u8], since: u32, max: usize) -> Vec<Evidence> {
        let n = self.slots.len();
        let mut out = Vec::new();
        for i in 0..n {
            let idx = (self.next + n - 1 - i) % n;
            let slot = &mut self.slots[idx];
            if slot.used && slot.key == key && slot.sec >= since {
                slot.used = false;
                out.push(Evidence {
                    source: slot.origin.source,
                    offset: slot.origin.offset,
                    line: String::from_utf8_lossy(&slot.line).into_owned(),
                    client: slot.client,
                    geo: None,
                });
                if out.len() == max {
                    break;
                }
            }
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recent_lines_of_one_key() {
        let mut r = EvidenceRing::new(4);
        for (i, k) in ["a", "b", "a", "a", "b", "a"].iter().enumerate() {
            r.record(
                k.as_bytes(),
                i as u32,
                Origin {
                    source: 0,
                    offset: i as u64,
                },
                None,
                format!("{k}{i}").as_bytes(),
            );
        }
        // Counted from second 3 on: a2 is older than the window.
        let ev = r.take_for(b"a", 3, 5);
        // The ring holds the last 4 (a2 a3 b4 a5): a0 was overwritten.
        assert_eq!(
            ev.iter().map(|e| e.line.as_str()).collect::<Vec<_>>(),
            ["a3", "a5"]
        );
        assert!(r.take_for(b"a", 3, 5).is_empty());
        assert_eq!(r.take_for(b"a", 0, 5).len(), 1, "a2 is still there");
    }
}
