//! Micro benchmarks of the pooler's hot and hot-ish paths: frame scanning (the relay's per-read
//! work), startup packet parsing, and the server side of a SCRAM login.
#![allow(clippy::unwrap_used)]

use bytes::{BufMut, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pgsluice::proto::scan::{Event, Scanner};

mod common;
use common::{frame, select_reply};

fn scanning(c: &mut Criterion) {
    let reply = select_reply(64);
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(reply.len() as u64));
    g.bench_function("server_replies_64_transactions", |b| {
        b.iter(|| {
            let mut s = Scanner::default();
            let mut rfq = 0;
            let out = s
                .scan(
                    black_box(&reply),
                    |t, _| matches!(t, b'Z' | b'S' | b'E'),
                    |e| {
                        if let Event::Whole { tag: b'Z', .. } = e {
                            rfq += 1;
                        }
                        true
                    },
                )
                .unwrap();
            assert_eq!(rfq, 64);
            out.forward
        })
    });
    let mut big = BytesMut::new();
    frame(&mut big, b'd', &vec![b'x'; 1 << 20]);
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("copy_data_1mib_in_64k_reads", |b| {
        b.iter(|| {
            let mut s = Scanner::default();
            let mut total = 0;
            for chunk in big.chunks(64 * 1024) {
                total += s
                    .scan(black_box(chunk), |_, _| false, |_| true)
                    .unwrap()
                    .forward;
            }
            total
        })
    });
    g.finish();
}

fn startup(c: &mut Criterion) {
    let mut packet = BytesMut::new();
    let body = b"user\0app\0database\0appdb\0application_name\0psql\0client_encoding\0UTF8\0\0";
    packet.put_u32(8 + body.len() as u32);
    packet.put_u32(196_608);
    packet.put_slice(body);
    c.bench_function("startup_packet_parse", |b| {
        b.iter(|| {
            let mut buf = packet.clone();
            pgsluice::proto::startup::parse(black_box(&mut buf)).unwrap()
        })
    });
}

fn scram(c: &mut Criterion) {
    use pgsluice::auth::scram::ScramServer;
    use pgsluice::auth::secret::ScramVerifier;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let verifier = ScramVerifier::from_password(b"secret", b"0123456789abcdef", 4096);
    // The client's side costs the PBKDF2; the pooler's verification against a stored (or cached)
    // verifier costs a few HMACs, which is what this measures.
    c.bench_function("scram_server_verify_with_stored_verifier", |b| {
        b.iter_batched(
            || {
                let mut client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
                let (waiting, server_first) = ScramServer::new(verifier.clone(), [3; 18])
                    .client_first(client.message())
                    .unwrap();
                client.update(&server_first).unwrap();
                (waiting, client.message().to_vec())
            },
            |(waiting, client_final)| waiting.client_final(black_box(&client_final)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("scram_verifier_from_password_4096", |b| {
        b.iter(|| ScramVerifier::from_password(black_box(b"secret"), b"0123456789abcdef", 4096))
    });
}

criterion_group!(benches, scanning, startup, scram);
criterion_main!(benches);
