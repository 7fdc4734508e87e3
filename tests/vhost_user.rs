//! The vhost-user-net backend against a frontend of our own over a real
//! socket with memfd guest memory: frames of every size both ways,
//! mergeable buffers, a full receive ring, and frontends that lie in every
//! field the protocol and the rings have. A lying frontend loses its port
//! (an error from the call that met the lie) or has the bad frame dropped;
//! a well-behaved port beside it keeps exchanging frames throughout.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_memory::{Bytes, GuestAddress};
use vswitch::fuzzing::frontend::{
    EVENT_IDX, Frontend, IN_ORDER, INDIRECT_DESC, MEM_SIZE, MRG_RXBUF, QUEUE_SIZE, RX, TX, USER_BASE, VERSION_1,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, buffer, request,
};
use vswitch::net::vhost_user::{
    BATCH, Control, EachFrame, MAX_FRAME, PortError, Received, VhostUserListener, VhostUserPort,
};

const FEATURES: u64 = VERSION_1 | MRG_RXBUF | EVENT_IDX | INDIRECT_DESC;

/// A listener, a frontend connected to it and the backend's port for it.
struct Link {
    _dir: tempfile::TempDir,
    _listener: VhostUserListener,
    port: VhostUserPort,
    front: Frontend,
}

/// Connects a frontend and lets the port take in what it sent before
/// frames flow (nothing, when `set_up` is false).
fn link(features: u64, set_up: bool) -> Link {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = VhostUserListener::bind(&dir.path().join("vhu")).expect("listen");
    let mut front = Frontend::connect(listener.path()).expect("connect");
    let mut port = listener.accept().expect("accept").expect("a waiting frontend");
    if set_up {
        front.set_up(features).expect("set-up messages");
        assert_eq!(port.handle_control().expect("a good set-up"), Control::KicksChanged);
        assert!(port.tx_kick().is_some() && port.rx_kick().is_some());
    }
    Link { _dir: dir, _listener: listener, port, front }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f
}

/// Everything the port has from the guest, batch by batch.
fn receive_all(port: &mut VhostUserPort) -> Result<Vec<Vec<u8>>, PortError> {
    let mut frames = Vec::new();
    loop {
        let got = port.receive(BATCH, &mut EachFrame::new(MAX_FRAME, |f| frames.push(f.to_vec())))?;
        if !got.more {
            return Ok(frames);
        }
    }
}

/// `frames` from the guest to the switch and back, compared byte for byte.
fn round_trip(link: &mut Link, frames: &[Vec<u8>]) {
    for f in frames {
        link.front.transmit(f);
    }
    assert_eq!(&receive_all(&mut link.port).expect("a good port receives"), frames);
    link.front.post_receive_buffers(frames.len() as u16, 2048);
    let sent = link.port.send(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>()).expect("a good port sends");
    assert_eq!((sent.frames, sent.would_block), (frames.len(), false));
    assert_eq!(&link.front.received(), frames);
}

fn healthy(link: &mut Link, seed: u8) {
    round_trip(link, &[frame(60, seed), frame(1518, seed), frame(342, seed)]);
}

#[test]
fn frames_of_every_size_arrive_intact_both_ways() {
    let mut link = link(FEATURES, true);
    let sizes: Vec<usize> = (60..=1518).collect();
    // Less than a ring at a time, as a driver that reclaims its buffers.
    for chunk in sizes.chunks(usize::from(QUEUE_SIZE) / 2) {
        let frames: Vec<Vec<u8>> = chunk.iter().map(|&len| frame(len, len as u8)).collect();
        round_trip(&mut link, &frames);
    }
}

#[test]
fn a_frame_spreads_over_small_mergeable_buffers() {
    let mut link = link(FEATURES, true);
    link.front.post_receive_buffers(4, 512);
    let big = frame(1518, 7);
    let sent = link.port.send(&[big.as_slice()]).expect("send");
    assert_eq!(sent.frames, 1);
    // 12 + 1518 bytes in buffers of 512: three of them, the header's
    // buffer count saying so.
    let (lengths, bytes) = merged(&mut link.front);
    assert_eq!(lengths, [512, 512, 506]);
    assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 3);
    assert_eq!(&bytes[12..], big.as_slice());
}

/// The receive buffers the port used since the last look: their lengths,
/// and their bytes joined (headers included).
fn merged(front: &mut Frontend) -> (Vec<u32>, Vec<u8>) {
    let used = front.used(RX);
    let mut bytes = Vec::new();
    for &(head, len) in &used {
        let mut b = vec![0u8; len as usize];
        front.memory.read_slice(&mut b, GuestAddress(buffer(RX, head))).expect("in guest memory");
        bytes.extend(b);
    }
    (used.iter().map(|u| u.1).collect(), bytes)
}

#[test]
fn a_full_receive_ring_blocks_until_the_guest_adds_buffers() {
    let mut link = link(FEATURES, true);
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(100, i)).collect();
    link.front.post_receive_buffers(2, 2048);
    let sent = link.port.send(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>()).expect("send");
    assert_eq!((sent.frames, sent.would_block), (2, true));
    assert_eq!(link.front.received(), frames[..2]);
    link.front.post_receive_buffers(3, 2048);
    // The guest's refill raised the receive kick the port asked for.
    let kick = link.port.rx_kick().expect("receive kick");
    assert_eq!(poll(&mut [PollFd::new(kick, PollFlags::POLLIN)], PollTimeout::ZERO), Ok(1));
    let sent = link.port.send(&frames[2..].iter().map(Vec::as_slice).collect::<Vec<_>>()).expect("send");
    assert_eq!((sent.frames, sent.would_block), (3, false));
    assert_eq!(link.front.received(), frames[2..]);
}

#[test]
fn a_polling_port_looks_again_until_its_window_passes() {
    let mut link = link(FEATURES, true);
    let mut frames = Vec::new();
    let mut receive = |port: &mut VhostUserPort| {
        port.receive(BATCH, &mut EachFrame::new(MAX_FRAME, |f| frames.push(f.to_vec()))).expect("receive")
    };
    // Not polling: an empty ring arms the kick and the caller waits for it.
    link.front.transmit(&frame(60, 1));
    assert_eq!(receive(&mut link.port), Received { frames: 1, more: false });
    // Polling, within the window of the last frame: look again, no kick.
    link.port.set_poll(Duration::from_secs(3600));
    assert_eq!(receive(&mut link.port), Received { frames: 0, more: false }, "no frame yet to poll after");
    link.front.transmit(&frame(61, 2));
    assert_eq!(receive(&mut link.port), Received { frames: 1, more: true });
    assert_eq!(receive(&mut link.port), Received { frames: 0, more: true });
    link.front.transmit(&frame(62, 3));
    assert_eq!(receive(&mut link.port), Received { frames: 1, more: true });
    // Window over (here: polling off): back to waiting for the kick.
    link.port.set_poll(Duration::ZERO);
    assert_eq!(receive(&mut link.port), Received { frames: 0, more: false });
    assert_eq!(frames, [frame(60, 1), frame(61, 2), frame(62, 3)]);
    healthy(&mut link, 4);
}

/// Replaces the memory table with two regions that split the guest's
/// memory at `at`, both backed by the same memfd.
fn split_memory(front: &Frontend, at: u64) {
    let mut p = Vec::new();
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    for (guest, size) in [(0, at), (at, MEM_SIZE - at)] {
        for v in [guest, size, USER_BASE + guest, guest] {
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
    let fd = front.memfd.as_raw_fd();
    front.send(request::SET_MEM_TABLE, &p, &[fd, fd]).expect("memory table");
}

#[test]
fn buffers_and_indirect_tables_across_two_regions_arrive_whole() {
    const AT: u64 = 0x10_0000;
    let mut link = link(FEATURES, true);
    split_memory(&link.front, AT);
    assert_eq!(link.port.handle_control().expect("a good memory table"), Control::Unchanged);
    let f = frame(200, 7);
    let mut bytes = vec![0u8; 12];
    bytes.extend_from_slice(&f);
    let addr = AT - 40;
    link.front.memory.write_slice(&bytes, GuestAddress(addr)).expect("inside guest memory");
    // One buffer that starts in the first region and ends in the second.
    link.front.write_desc(TX, 20, addr, bytes.len() as u32, 0, 0);
    link.front.make_available(TX, 20);
    link.front.kick(TX);
    assert_eq!(receive_all(&mut link.port).expect("a buffer across regions is read"), std::slice::from_ref(&f));
    // The same bytes through an indirect table of two descriptors, one on
    // each side of the boundary (pointing elsewhere).
    let (table, addr) = (AT - 16, AT + 0x800);
    link.front.memory.write_slice(&bytes, GuestAddress(addr)).expect("inside guest memory");
    let split = 42u32;
    for (i, (at, len, flags, next)) in
        [(addr, split, VRING_DESC_F_NEXT, 1u16), (addr + u64::from(split), bytes.len() as u32 - split, 0, 0)]
            .into_iter()
            .enumerate()
    {
        let mut d = at.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        link.front.memory.write_slice(&d, GuestAddress(table + 16 * i as u64)).expect("inside guest memory");
    }
    link.front.write_desc(TX, 21, table, 32, VRING_DESC_F_INDIRECT, 0);
    link.front.make_available(TX, 21);
    link.front.kick(TX);
    assert_eq!(receive_all(&mut link.port).expect("a table across regions is read"), [f]);
    healthy(&mut link, 8);
}

#[test]
fn features_offered_are_the_ones_asked_for() {
    let mut link = link(FEATURES, false);
    link.front.send(request::GET_FEATURES, &[], &[]).expect("send");
    link.port.handle_control().expect("get features");
    let offered = u64::from_le_bytes(link.front.reply().expect("reply")[..8].try_into().expect("8 bytes"));
    for bit in [VERSION_1, MRG_RXBUF, EVENT_IDX] {
        assert_ne!(offered & bit, 0, "feature bit {bit:#x} offered");
    }
}

/// A control-plane lie: the port refuses it with an error, and the healthy
/// link beside it goes on.
fn refused(lie: impl FnOnce(&Frontend)) {
    let mut good = link(FEATURES, true);
    healthy(&mut good, 1);
    let mut bad = link(FEATURES, false);
    lie(&bad.front);
    assert!(bad.port.handle_control().is_err(), "the lie was refused");
    healthy(&mut good, 2);
}

#[test]
fn memory_region_beyond_its_file_is_refused() {
    refused(|f| f.set_mem_table(0, MEM_SIZE * 4, USER_BASE, 0, f.memfd.as_raw_fd()).expect("send"));
    refused(|f| f.set_mem_table(0, MEM_SIZE, USER_BASE, MEM_SIZE, f.memfd.as_raw_fd()).expect("send"));
    refused(|f| f.set_mem_table(0, u64::MAX, USER_BASE, 0, f.memfd.as_raw_fd()).expect("send"));
}

#[test]
fn memory_table_without_its_descriptor_is_refused() {
    refused(|f| {
        let mut p = 1u32.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        for v in [0, MEM_SIZE, USER_BASE, 0] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        f.send(request::SET_MEM_TABLE, &p, &[]).expect("send");
    });
}

#[test]
fn ring_outside_the_memory_table_is_refused() {
    refused(|f| {
        f.set_mem_table(0, MEM_SIZE, USER_BASE, 0, f.memfd.as_raw_fd()).expect("send");
        f.set_vring_addr(TX, 0x1000, USER_BASE + 0x2000, USER_BASE + 0x3000).expect("send");
    });
}

#[test]
fn bad_ring_sizes_and_queue_indices_are_refused() {
    refused(|f| f.vring_state(request::SET_VRING_NUM, TX, 100).expect("send"));
    refused(|f| f.vring_state(request::SET_VRING_NUM, TX, 65536).expect("send"));
    refused(|f| f.vring_state(request::SET_VRING_NUM, 7, 256).expect("send"));
}

#[test]
fn oversized_and_unknown_messages_are_refused() {
    refused(|f| f.send(request::SET_OWNER, &vec![0; 0x2000], &[]).expect("send"));
    refused(|f| f.send(9999, &[], &[]).expect("send"));
    refused(|f| f.send(request::SET_FEATURES, &(1u64 << 63).to_le_bytes(), &[]).expect("send"));
}

#[test]
fn half_a_message_waits_without_stalling_anyone() {
    let mut good = link(FEATURES, true);
    let mut bad = link(FEATURES, false);
    bad.front.send_raw(&[3, 0, 0, 0, 1], &[]).expect("send");
    assert_eq!(bad.port.handle_control().expect("nothing to handle yet"), Control::Unchanged);
    healthy(&mut good, 3);
    // The rest of the header arrives: a complete SET_OWNER.
    bad.front.send_raw(&[0, 0, 0, 0, 0, 0, 0], &[]).expect("send");
    assert_eq!(bad.port.handle_control().expect("set owner"), Control::Unchanged);
}

#[test]
fn hang_up_is_reported() {
    let mut link = link(FEATURES, true);
    drop(link.front);
    assert!(matches!(link.port.handle_control(), Err(PortError::HungUp)));
}

/// A data-plane lie: whatever the port does with it, no frame the switch
/// would carry comes out of it (a chain too long to be one is handed on
/// cut past the largest frame, for the engine to count as oversize), and
/// the healthy link beside it goes on.
fn dropped_or_refused(lie: impl FnOnce(&mut Frontend)) {
    let mut good = link(FEATURES, true);
    let mut bad = link(FEATURES, true);
    healthy(&mut bad, 4);
    lie(&mut bad.front);
    if let Ok(frames) = receive_all(&mut bad.port) {
        let carried = frames.iter().filter(|f| f.len() <= MAX_FRAME).count();
        assert_eq!(carried, 0, "a bad descriptor produced frames: {frames:?}");
    }
    healthy(&mut good, 5);
}

#[test]
fn descriptor_index_beyond_the_ring_is_refused() {
    dropped_or_refused(|f| {
        f.make_available(TX, QUEUE_SIZE + 3);
        f.kick(TX);
    });
}

#[test]
fn descriptor_outside_guest_memory_is_refused() {
    dropped_or_refused(|f| {
        f.write_desc(TX, 9, MEM_SIZE * 2, 100, 0, 0);
        f.make_available(TX, 9);
        f.kick(TX);
    });
    dropped_or_refused(|f| {
        f.write_desc(TX, 9, MEM_SIZE - 50, 100, 0, 0);
        f.make_available(TX, 9);
        f.kick(TX);
    });
}

#[test]
fn looping_chain_is_cut() {
    dropped_or_refused(|f| {
        f.write_desc(TX, 10, buffer(TX, 10), 100, VRING_DESC_F_NEXT, 11);
        f.write_desc(TX, 11, buffer(TX, 11), 100, VRING_DESC_F_NEXT, 10);
        f.make_available(TX, 10);
        f.kick(TX);
    });
}

#[test]
fn bad_indirect_tables_are_refused() {
    // A table whose length is not a whole number of descriptors.
    dropped_or_refused(|f| {
        f.write_desc(TX, 12, buffer(TX, 12), 23, VRING_DESC_F_INDIRECT, 0);
        f.make_available(TX, 12);
        f.kick(TX);
    });
    // A table outside guest memory.
    dropped_or_refused(|f| {
        f.write_desc(TX, 12, MEM_SIZE + 4096, 64, VRING_DESC_F_INDIRECT, 0);
        f.make_available(TX, 12);
        f.kick(TX);
    });
}

#[test]
fn available_index_far_ahead_is_refused() {
    dropped_or_refused(|f| {
        f.set_avail_idx(TX, 5000);
        f.kick(TX);
    });
}

#[test]
fn kick_and_call_descriptors_are_made_non_blocking() {
    let link = link(FEATURES, true);
    // The frontend made its call eventfds blocking; the flag lives on the
    // file description both sides share, and it is what keeps the switch
    // from blocking on a call eventfd the frontend filled up.
    let flags = nix::fcntl::fcntl(link.front.calls[TX].as_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("flags");
    assert_ne!(flags & nix::fcntl::OFlag::O_NONBLOCK.bits(), 0);
}

#[test]
fn a_header_and_frame_cut_anywhere_over_descriptors_arrive_as_the_frame() {
    let mut link = link(FEATURES, true);
    let sent = frame(60, 3);
    // A header of non-zero bytes, so a byte of it taken for the frame shows.
    let mut packet = vec![0xee; 12];
    packet.extend_from_slice(&sent);
    let addr = buffer(TX, 0);
    link.front.memory.write_slice(&packet, GuestAddress(addr)).expect("buffer inside guest memory");
    let total = packet.len() as u64;
    for a in 0..=14 {
        for b in a..=16 {
            // Three descriptors over bytes [0, a), [a, b) and [b, total).
            link.front.write_desc(TX, 0, addr, a as u32, VRING_DESC_F_NEXT, 1);
            link.front.write_desc(TX, 1, addr + a, (b - a) as u32, VRING_DESC_F_NEXT, 2);
            link.front.write_desc(TX, 2, addr + b, (total - b) as u32, 0, 0);
            link.front.make_available(TX, 0);
            assert_eq!(
                receive_all(&mut link.port).expect("a good chain"),
                std::slice::from_ref(&sent),
                "cut at {a} and {b}"
            );
        }
    }
}

#[test]
fn receive_buffers_smaller_than_the_header_take_it_in_pieces() {
    let mut link = link(FEATURES, true);
    link.front.post_receive_buffers(11, 7);
    let sent = frame(60, 9);
    assert_eq!(link.port.send(&[sent.as_slice()]).expect("send").frames, 1);
    // 12 + 60 bytes in buffers of 7: ten full and one of 2, the header
    // across the first two.
    let (lengths, bytes) = merged(&mut link.front);
    assert_eq!(lengths, [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 2]);
    assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 11);
    assert_eq!(&bytes[12..], sent.as_slice());
}

/// A frontend that negotiated `VIRTIO_F_IN_ORDER` may take one used entry
/// to stand for every chain made available before it (DPDK's in-order
/// paths find a chain by its place in the ring): chains must come back in
/// the order they were made available, in both rings, whatever their heads.
#[test]
fn chains_come_back_in_the_order_they_were_made_available() {
    let mut link = link(FEATURES | IN_ORDER, true);
    let heads = [5u16, 2, 7, 0];
    let frames: Vec<Vec<u8>> = (0..heads.len()).map(|i| frame(60 + i * 10, i as u8)).collect();
    for (&head, f) in heads.iter().zip(&frames) {
        let mut bytes = vec![0u8; 12];
        bytes.extend_from_slice(f);
        link.front.memory.write_slice(&bytes, GuestAddress(buffer(TX, head))).expect("buffer in memory");
        link.front.write_desc(TX, head, buffer(TX, head), bytes.len() as u32, 0, 0);
        link.front.make_available(TX, head);
    }
    link.front.kick(TX);
    assert_eq!(receive_all(&mut link.port).expect("a good port receives"), frames);
    let used: Vec<u16> = link.front.used(TX).iter().map(|&(head, _)| head).collect();
    assert_eq!(used, heads);

    let heads = [3u16, 6, 1];
    for &head in &heads {
        link.front.write_desc(RX, head, buffer(RX, head), 2048, VRING_DESC_F_WRITE, 0);
        link.front.make_available(RX, head);
    }
    let out: Vec<&[u8]> = frames[..heads.len()].iter().map(Vec::as_slice).collect();
    assert_eq!(link.port.send(&out).expect("send").frames, heads.len());
    let used: Vec<u16> = link.front.used(RX).iter().map(|&(head, _)| head).collect();
    assert_eq!(used, heads);
}
