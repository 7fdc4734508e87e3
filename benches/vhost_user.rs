//! Cost of a vhost-user port's data path: a batch out of the guest's
//! transmit ring into a receive batch, and back into its receive ring.
//! One process, guest memory in a memfd: the copies and ring walks alone,
//! without the cross-CPU cache traffic of a real frontend.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vswitch::fuzzing::frontend::{EVENT_IDX, Frontend, INDIRECT_DESC, MRG_RXBUF, RX, TX, VERSION_1};
use vswitch::net::sys::RecvBatch;
use vswitch::net::vhost_user::{BATCH, Control, IntoBatch, MAX_FRAME, VhostUserListener};

fn out_and_back(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = VhostUserListener::bind(&dir.path().join("vhu")).expect("listen");
    let mut front = Frontend::connect(listener.path()).expect("connect");
    let mut port = listener.accept().expect("accept").expect("a waiting frontend");
    front.set_up(VERSION_1 | MRG_RXBUF | EVENT_IDX | INDIRECT_DESC).expect("set-up messages");
    assert_eq!(port.handle_control().expect("a good set-up"), Control::KicksChanged);
    let mut rx = RecvBatch::new(MAX_FRAME + 1);
    let mut group = c.benchmark_group("vhost-user");
    group.throughput(Throughput::Elements(BATCH as u64));
    for size in [64, 1518] {
        let frame = vec![0x5a; size];
        group.bench_function(format!("{size} B out and back, batch of {BATCH}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        front.stage(&frame);
                    }
                    front.post_receive_buffers(BATCH as u16, 2048);
                    let start = Instant::now();
                    let mut into = IntoBatch { rx: &mut rx, filled: 0 };
                    port.receive(BATCH, &mut into).expect("a good port receives");
                    let n = into.filled;
                    let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
                    for (i, frame) in frames.iter_mut().enumerate().take(n) {
                        *frame = rx.frame(i);
                    }
                    let sent = port.send(&frames[..n]).expect("a good port sends");
                    spent += start.elapsed();
                    assert_eq!((n, sent.frames), (BATCH, BATCH));
                    front.used(TX);
                    front.used(RX);
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, out_and_back);
criterion_main!(benches);
