//! The MAC learning table: (MAC, VLAN) → port, with vde_switch's ageing
//! rules (GC interval, expiry, minimum persistence before a station may move).

use lru::LruCache;

use super::{Event, PortId, VlanId};
use crate::wire::Mac;

pub const DEFAULT_BUCKETS: u32 = 128;
pub const DEFAULT_GC_INTERVAL: u64 = 2;
pub const DEFAULT_EXPIRE: u64 = 100;
pub const DEFAULT_MIN_PERSISTENCE: u64 = 3;
/// Upper bound on learned stations, so random source MACs cannot exhaust
/// memory; beyond it the least recently seen station is forgotten.
pub const DEFAULT_CAPACITY: usize = 1 << 16;
/// Largest bucket count (`--hashsize`, `hash/setsize`).
pub const MAX_BUCKETS: u32 = 1 << 30;

/// The bucket count for a requested table size: rounded up to a power of
/// two as vde_switch does, or `None` for 0 and sizes beyond [`MAX_BUCKETS`].
pub fn bucket_count(requested: u64) -> Option<u32> {
    let rounded = u32::try_from(requested).ok().filter(|&n| n > 0 && n <= MAX_BUCKETS)?.next_power_of_two();
    Some(rounded)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    port: PortId,
    last_seen: u64,
    /// Insertion order, so listings can show newest-first within a bucket
    /// as the reference's chained buckets do.
    seq: u64,
}

/// One row of `hash/print`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    pub bucket: u32,
    pub mac: Mac,
    pub vlan: VlanId,
    pub port: PortId,
    pub age: u64,
}

/// The reference switch's key layout; only `hash/print` ordering depends on it.
fn key(mac: Mac, vlan: VlanId) -> u64 {
    let m = mac.0;
    u64::from(u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
        | u64::from(u16::from_le_bytes([m[4], m[5]])) << 32
        | u64::from(vlan) << 48
}

fn unkey(k: u64) -> (Mac, VlanId) {
    let b = k.to_le_bytes();
    (Mac([b[0], b[1], b[2], b[3], b[4], b[5]]), (k >> 48) as VlanId)
}

fn bucket_of(k: u64, buckets: u32) -> u32 {
    let mut k = k ^ (k >> 33);
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (k & u64::from(buckets - 1)) as u32
}

/// One frame's stations: the keys of its source and destination (MAC and
/// VLAN), the port it came in on, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conversation {
    src: u64,
    dst: u64,
    port: PortId,
    now: u64,
}

pub struct MacTable {
    buckets: u32,
    pub gc_interval: u64,
    pub expire: u64,
    pub min_persistence: u64,
    /// Least recently refreshed first: ageing sweeps pop from that end only.
    entries: LruCache<u64, Entry>,
    capacity: usize,
    next_seq: u64,
    last_gc: u64,
    gc_due: bool,
    /// The last frame's conversation and where its destination was, while
    /// nothing in the table has changed since: a batch from one guest is
    /// mostly one conversation, and learning and looking it up again would
    /// change and find nothing new.
    last: Option<(Conversation, Option<PortId>)>,
}

impl MacTable {
    pub fn new(buckets: u32, capacity: usize) -> Self {
        MacTable {
            buckets: bucket_count(buckets.into()).unwrap_or(DEFAULT_BUCKETS),
            gc_interval: DEFAULT_GC_INTERVAL,
            expire: DEFAULT_EXPIRE,
            min_persistence: DEFAULT_MIN_PERSISTENCE,
            // Grown on demand: a bounded cache would allocate its whole
            // capacity up front.
            entries: LruCache::unbounded(),
            capacity: capacity.max(1),
            next_seq: 0,
            last_gc: 0,
            gc_due: false,
            last: None,
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes the bucket count (a power of two) and forgets every station.
    /// The stations go first, so their events come in the old table's
    /// bucket order, as vde_switch flushes before it resizes.
    pub fn resize(&mut self, buckets: u32, events: &mut Vec<Event>) {
        self.retain(|_| false, events);
        self.buckets = bucket_count(buckets.into()).unwrap_or(DEFAULT_BUCKETS);
    }

    /// Called once per second. Like the Debian build of vde_switch, the GC
    /// interval only arms a sweep; it runs at the next lookup a frame causes.
    pub fn tick(&mut self, now: u64) {
        if now.saturating_sub(self.last_gc) >= self.gc_interval {
            self.last_gc = now;
            self.gc_due = true;
        }
    }

    fn collect_if_due(&mut self, now: u64, events: &mut Vec<Event>) {
        if !self.gc_due {
            return;
        }
        self.gc_due = false;
        self.last = None;
        let mut doomed = Vec::new();
        while let Some((_, e)) = self.entries.peek_lru() {
            if e.last_seen + self.expire >= now {
                break;
            }
            doomed.extend(self.entries.pop_lru());
        }
        self.announce_deleted(doomed, events);
    }

    /// Reports forgotten stations in `hash/print` order (bucket ascending,
    /// newest first), the order vde_switch's sweeps walk its buckets in.
    fn announce_deleted(&self, mut doomed: Vec<(u64, Entry)>, events: &mut Vec<Event>) {
        doomed.sort_unstable_by_key(|(k, e)| (bucket_of(*k, self.buckets), std::cmp::Reverse(e.seq)));
        for (k, e) in doomed {
            let (mac, vlan) = unkey(k);
            events.push(Event::HashDel { mac, vlan, port: e.port });
        }
    }

    /// Records that `mac` was seen on `port` in `vlan`.
    pub fn learn(&mut self, mac: Mac, vlan: VlanId, port: PortId, now: u64, events: &mut Vec<Event>) {
        self.settle(key(mac, vlan), port, now, events);
    }

    /// [`learn`](Self::learn) of the station whose key is `k`; false if it
    /// stays on another port (a move refused for persistence).
    #[inline(always)]
    fn settle(&mut self, k: u64, port: PortId, now: u64, events: &mut Vec<Event>) -> bool {
        self.last = None;
        self.collect_if_due(now, events);
        if let Some(e) = self.entries.peek_mut(&k) {
            if e.port != port {
                let (mac, _) = unkey(k);
                events.push(Event::MacMoved { mac, from: e.port, to: port });
                if now.saturating_sub(e.last_seen) <= self.min_persistence {
                    return false;
                }
                e.port = port;
            }
            // Seen already this second: it already sits among the entries
            // refreshed this second, so the recency order (which ageing
            // relies on) holds without moving it.
            if e.last_seen != now {
                e.last_seen = now;
                self.entries.promote(&k);
            }
            return true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry { port, last_seen: now, seq };
        if self.entries.len() >= self.capacity
            && let Some((old_k, old)) = self.entries.pop_lru()
        {
            let (mac, vlan) = unkey(old_k);
            events.push(Event::HashDel { mac, vlan, port: old.port });
        }
        self.entries.push(k, entry);
        let (mac, vlan) = unkey(k);
        events.push(Event::HashAdd { mac, vlan, port });
        true
    }

    /// Learns a frame's source `src` (unless multicast) behind `port` in
    /// `vlan` and returns the port its destination `dst` is known on (a
    /// multicast one never is).
    #[inline]
    pub fn learn_and_look_up(
        &mut self,
        src: Mac,
        dst: Mac,
        vlan: VlanId,
        port: PortId,
        now: u64,
        events: &mut Vec<Event>,
    ) -> Option<PortId> {
        let conversation = Conversation { src: key(src, vlan), dst: key(dst, vlan), port, now };
        if !self.gc_due
            && let Some((last, found)) = self.last
            && last == conversation
        {
            return found;
        }
        // Kept only once the source sits on this port: a move refused for
        // persistence is reported again by every frame.
        let settled = src.is_multicast() || self.settle(conversation.src, port, now, events);
        let found = if dst.is_multicast() { None } else { self.port_of(conversation.dst, now, events) };
        self.last = settled.then_some((conversation, found));
        found
    }

    /// The port `mac` was learned on in `vlan`, if any.
    pub fn lookup(&mut self, mac: Mac, vlan: VlanId, now: u64, events: &mut Vec<Event>) -> Option<PortId> {
        self.port_of(key(mac, vlan), now, events)
    }

    /// [`lookup`](Self::lookup) of the station whose key is `k`.
    fn port_of(&mut self, k: u64, now: u64, events: &mut Vec<Event>) -> Option<PortId> {
        self.collect_if_due(now, events);
        self.entries.peek(&k).map(|e| e.port)
    }

    /// Forgets every station for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Station) -> bool, events: &mut Vec<Event>) {
        let doomed: Vec<(u64, Entry)> =
            self.entries.iter().filter(|(k, e)| !keep(&self.station(**k, e, 0))).map(|(k, e)| (*k, *e)).collect();
        self.last = None;
        for (k, _) in &doomed {
            self.entries.pop(k);
        }
        self.announce_deleted(doomed, events);
    }

    fn station(&self, k: u64, e: &Entry, now: u64) -> Station {
        let (mac, vlan) = unkey(k);
        Station { bucket: bucket_of(k, self.buckets), mac, vlan, port: e.port, age: now.saturating_sub(e.last_seen) }
    }

    /// All stations in `hash/print` order: bucket ascending, newest first.
    pub fn stations(&self, now: u64) -> Vec<Station> {
        let mut rows: Vec<(u64, Station)> =
            self.entries.iter().map(|(k, e)| (e.seq, self.station(*k, e, now))).collect();
        rows.sort_by(|a, b| a.1.bucket.cmp(&b.1.bucket).then(b.0.cmp(&a.0)));
        rows.into_iter().map(|(_, s)| s).collect()
    }

    pub fn find(&self, mac: Mac, vlan: VlanId, now: u64) -> Option<Station> {
        let k = key(mac, vlan);
        self.entries.peek(&k).map(|e| self.station(k, e, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, last])
    }

    #[test]
    fn buckets_match_reference() {
        assert_eq!(bucket_of(key(mac(0x0a), 0), 128), 9);
        assert_eq!(bucket_of(key(mac(0x0b), 0), 128), 26);
        assert_eq!(bucket_of(key(Mac([0x52, 0x54, 0, 0, 0, 1]), 0), 128), 30);
        assert_eq!(bucket_of(key(Mac([0x52, 0x54, 0, 0, 0, 2]), 0), 128), 67);
    }

    #[test]
    fn key_round_trips() {
        let m = Mac([1, 2, 3, 4, 5, 6]);
        assert_eq!(unkey(key(m, 4093)), (m, 4093));
    }

    #[test]
    fn move_needs_more_than_min_persistence() {
        let mut t = MacTable::new(128, 16);
        let mut ev = Vec::new();
        t.learn(mac(1), 0, 1, 10, &mut ev);
        t.learn(mac(1), 0, 2, 13, &mut ev);
        assert_eq!(t.lookup(mac(1), 0, 13, &mut ev), Some(1));
        t.learn(mac(1), 0, 2, 14, &mut ev);
        assert_eq!(t.lookup(mac(1), 0, 14, &mut ev), Some(2));
        let moves = ev.iter().filter(|e| matches!(e, Event::MacMoved { .. })).count();
        assert_eq!(moves, 2, "a refused move is still reported");
    }

    #[test]
    fn expiry_waits_for_gc_and_traffic() {
        let mut t = MacTable::new(128, 16);
        let mut ev = Vec::new();
        t.expire = 3;
        t.learn(mac(1), 0, 1, 0, &mut ev);
        t.learn(mac(2), 0, 1, 5, &mut ev);
        for now in 1..=9 {
            t.tick(now);
        }
        assert_eq!(t.len(), 2, "ticks alone never sweep");
        ev.clear();
        assert_eq!(t.lookup(mac(9), 0, 9, &mut ev), None);
        assert_eq!(t.len(), 0);
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn expiry_is_strict() {
        let mut t = MacTable::new(128, 16);
        let mut ev = Vec::new();
        t.expire = 3;
        t.learn(mac(1), 0, 1, 0, &mut ev);
        t.tick(3);
        assert_eq!(t.lookup(mac(1), 0, 3, &mut ev), Some(1));
        t.tick(5);
        assert_eq!(t.lookup(mac(1), 0, 5, &mut ev), None);
    }

    #[test]
    fn capacity_evicts_least_recently_seen() {
        let mut t = MacTable::new(128, 2);
        let mut ev = Vec::new();
        t.learn(mac(1), 0, 1, 0, &mut ev);
        t.learn(mac(2), 0, 1, 1, &mut ev);
        t.learn(mac(1), 0, 1, 2, &mut ev);
        t.learn(mac(3), 0, 1, 3, &mut ev);
        assert_eq!(t.lookup(mac(2), 0, 3, &mut ev), None);
        assert_eq!(t.lookup(mac(1), 0, 3, &mut ev), Some(1));
        assert!(ev.contains(&Event::HashDel { mac: mac(2), vlan: 0, port: 1 }));
    }

    fn deleted(ev: &[Event]) -> Vec<Mac> {
        ev.iter().filter_map(|e| if let Event::HashDel { mac, .. } = e { Some(*mac) } else { None }).collect()
    }

    #[test]
    fn flushes_and_sweeps_report_in_listing_order() {
        let mut t = MacTable::new(128, 64);
        let mut ev = Vec::new();
        for (i, n) in [0x0b, 0x0a, 0x0c, 0x0d, 0x01, 0x02].into_iter().enumerate() {
            t.learn(mac(n), 0, 1, i as u64, &mut ev);
        }
        let listed: Vec<Mac> = t.stations(9).iter().map(|s| s.mac).collect();
        ev.clear();
        t.tick(200);
        t.lookup(mac(0x30), 0, 200, &mut ev);
        assert_eq!(deleted(&ev), listed, "a sweep");
        for (i, n) in [0x0b, 0x0a, 0x0c, 0x0d, 0x01, 0x02].into_iter().enumerate() {
            t.learn(mac(n), 0, 1, 300 + i as u64, &mut ev);
        }
        let listed: Vec<Mac> = t.stations(309).iter().map(|s| s.mac).collect();
        ev.clear();
        t.resize(4, &mut ev);
        assert_eq!(deleted(&ev), listed, "a resize reports in the old table's order");
    }

    #[test]
    fn listing_is_bucket_then_newest_first() {
        let mut t = MacTable::new(1, 16);
        let mut ev = Vec::new();
        t.learn(mac(1), 0, 1, 0, &mut ev);
        t.learn(mac(2), 0, 2, 0, &mut ev);
        let rows: Vec<u8> = t.stations(0).iter().map(|s| s.mac.0[5]).collect();
        assert_eq!(rows, vec![2, 1]);
    }

    #[test]
    fn a_repeated_conversation_sees_every_change_to_the_table() {
        let mut t = MacTable::new(128, 16);
        let mut ev = Vec::new();
        let (a, b) = (mac(1), mac(2));
        assert_eq!(t.learn_and_look_up(a, b, 0, 1, 10, &mut ev), None);
        assert_eq!(t.learn_and_look_up(b, a, 0, 2, 10, &mut ev), Some(1));
        assert_eq!(t.learn_and_look_up(a, b, 0, 1, 10, &mut ev), Some(2));
        // The destination moves: the same conversation finds it there.
        t.learn(b, 0, 3, 20, &mut ev);
        assert_eq!(t.learn_and_look_up(a, b, 0, 1, 20, &mut ev), Some(3));
        // Forgotten: the same conversation floods.
        t.retain(|s| s.mac != b, &mut ev);
        assert_eq!(t.learn_and_look_up(a, b, 0, 1, 20, &mut ev), None);
        // Expired by a sweep: it is learned again, and announced.
        t.learn(b, 0, 3, 20, &mut ev);
        assert_eq!(t.learn_and_look_up(a, b, 0, 1, 20, &mut ev), Some(3));
        t.tick(200);
        ev.clear();
        assert_eq!(t.learn_and_look_up(a, b, 0, 1, 200, &mut ev), None);
        assert!(ev.contains(&Event::HashDel { mac: b, vlan: 0, port: 3 }), "{ev:?}");
        assert!(ev.contains(&Event::HashAdd { mac: a, vlan: 0, port: 1 }), "{ev:?}");
    }

    #[test]
    fn a_refused_move_is_reported_by_every_frame() {
        let mut t = MacTable::new(128, 16);
        let mut ev = Vec::new();
        t.learn(mac(1), 0, 1, 10, &mut ev);
        ev.clear();
        for _ in 0..3 {
            assert_eq!(t.learn_and_look_up(mac(1), mac(2), 0, 2, 11, &mut ev), None);
        }
        let moves = ev.iter().filter(|e| matches!(e, Event::MacMoved { .. })).count();
        assert_eq!(moves, 3);
        assert_eq!(t.lookup(mac(1), 0, 11, &mut ev), Some(1));
    }
}
