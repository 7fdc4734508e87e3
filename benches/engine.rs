//! Cost of the engine's forwarding decision, without any I/O.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use vswitch::engine::{Attach, Credentials, Delivery, EndpointKey, PortRequest, Switch};

fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [2, 0, b[0], b[1], b[2], b[3]]
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn tagged(dst: [u8; 6], src: [u8; 6], vlan: u16) -> Vec<u8> {
    let mut f = frame(dst, src);
    f.splice(12..12, [0x81, 0x00, (vlan >> 8) as u8, vlan as u8]);
    f
}

fn switch_with_ports(n: u32) -> (Switch, Vec<EndpointKey>) {
    let mut sw = Switch::new(64, false, 128);
    let keys = (1..=n)
        .map(|p| {
            let a = Attach {
                request: PortRequest::Port(p),
                id: p,
                module: "unix prog",
                description: Vec::new(),
                user: Some(0),
                credentials: Credentials::default(),
            };
            sw.attach(a).expect("free port").0
        })
        .collect();
    (sw, keys)
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut out: Vec<Delivery> = Vec::with_capacity(64);

    let (mut sw, keys) = switch_with_ports(2);
    sw.ingress(keys[1], &frame(mac(1), mac(2)), 0, &mut out).unwrap();
    let unicast = frame(mac(2), mac(1));
    group.bench_function("learned unicast", |b| {
        b.iter(|| {
            out.clear();
            sw.ingress(keys[0], black_box(&unicast), 0, &mut out).unwrap();
        })
    });

    let (mut sw, keys) = switch_with_ports(9);
    let broadcast = frame([0xff; 6], mac(1));
    group.bench_function("flood to 8 ports", |b| {
        b.iter(|| {
            out.clear();
            sw.ingress(keys[0], black_box(&broadcast), 0, &mut out).unwrap();
        })
    });

    let (mut sw, keys) = switch_with_ports(2);
    sw.create_vlan(10).unwrap();
    sw.add_tagged(10, 1).unwrap();
    sw.set_port_vlan(2, 10).unwrap();
    sw.ingress(keys[1], &frame(mac(1), mac(2)), 0, &mut out).unwrap();
    let vlan_frame = tagged(mac(2), mac(1), 10);
    group.bench_function("tagged to untagged unicast", |b| {
        b.iter(|| {
            out.clear();
            sw.ingress(keys[0], black_box(&vlan_frame), 0, &mut out).unwrap();
        })
    });

    let (mut sw, keys) = switch_with_ports(2);
    for n in 0..10_000 {
        sw.ingress(keys[1], &frame([0xff; 6], mac(1000 + n)), 0, &mut out).unwrap();
    }
    let frames: Vec<Vec<u8>> = (0..10_000).map(|n| frame(mac(1000 + n), mac(1))).collect();
    let mut i = 0;
    group.bench_function("unicast among 10k stations", |b| {
        b.iter(|| {
            out.clear();
            i = (i + 7919) % frames.len();
            sw.ingress(keys[0], black_box(&frames[i]), 0, &mut out).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
