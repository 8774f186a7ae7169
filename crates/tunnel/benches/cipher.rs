//! The ceiling the ciphers put on the tunnel: bytes per second one core seals (and opens) with
//! the implementations the tunnel runs, on full Noise frames (65,519 bytes of payload).
//!
//! - `noise_chachapoly`: ChaCha20-Poly1305 through snow's ring resolver, which is what
//!   libp2p-noise picks for its transport cipher on this platform (every byte over TCP).
//! - `noise_aesgcm`: AES-256-GCM through the same resolver, for comparison (Noise in libp2p
//!   negotiates ChaChaPoly only).
//! - `pnet_xsalsa20`: the PSK layer's XSalsa20 (RustCrypto `salsa20`, as libp2p-pnet uses), a
//!   second pass over every byte when a PSK is set.
//! - `tls_aes128gcm` / `tls_aes256gcm`: ring's AES-GCM on full TLS records (16 KiB), as rustls
//!   seals and opens them with ring's provider: which of TLS 1.3's AES suites to prefer.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::aead;
use salsa20::{
    XSalsa20,
    cipher::{KeyIvInit, StreamCipher},
};
use snow::{
    params::CipherChoice,
    resolvers::{CryptoResolver, RingResolver},
};

/// libp2p-noise's largest frame payload (65,535 minus the 16-byte tag).
const FRAME: usize = 65_535 - 16;

fn noise(c: &mut Criterion, name: &str, choice: CipherChoice) {
    let mut seal = RingResolver.resolve_cipher(&choice).expect("ring has this cipher");
    let mut open = RingResolver.resolve_cipher(&choice).expect("ring has this cipher");
    seal.set(&[7; 32]);
    open.set(&[7; 32]);
    let plain = vec![0x5a; FRAME];
    let mut sealed = vec![0; FRAME + 16];
    let mut opened = vec![0; FRAME];
    let mut group = c.benchmark_group(format!("cipher/{name}"));
    group.throughput(Throughput::Bytes(FRAME as u64));
    let mut nonce = 0u64;
    group.bench_function("seal_64k", |b| {
        b.iter(|| {
            nonce += 1;
            black_box(seal.encrypt(nonce, &[], &plain, &mut sealed))
        })
    });
    let n = seal.encrypt(1, &[], &plain, &mut sealed);
    group.bench_function("open_64k", |b| {
        b.iter(|| black_box(open.decrypt(1, &[], &sealed[..n], &mut opened).expect("authentic")))
    });
    group.finish();
}

/// A TLS 1.3 record's largest plaintext.
const RECORD: usize = 16 * 1024;

fn tls_aes(c: &mut Criterion, name: &str, alg: &'static aead::Algorithm) {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &vec![7; alg.key_len()]).expect("key length"));
    let nonce = || aead::Nonce::assume_unique_for_key([1; aead::NONCE_LEN]);
    let aad = aead::Aad::from([23u8, 3, 3, 0x40, 0x11]);
    let mut group = c.benchmark_group(format!("cipher/{name}"));
    group.throughput(Throughput::Bytes(RECORD as u64));
    let mut buf = vec![0x5a; RECORD];
    group.bench_function("seal_16k", |b| {
        b.iter(|| black_box(key.seal_in_place_separate_tag(nonce(), aad, &mut buf).expect("seal")))
    });
    let mut sealed = vec![0x5a; RECORD];
    let tag = key.seal_in_place_separate_tag(nonce(), aad, &mut sealed).expect("seal");
    sealed.extend_from_slice(tag.as_ref());
    let mut work = sealed.clone();
    group.bench_function("open_16k", |b| {
        b.iter(|| {
            work.copy_from_slice(&sealed);
            black_box(key.open_in_place(nonce(), aad, &mut work).expect("authentic").len())
        })
    });
    group.finish();
}

fn ciphers(c: &mut Criterion) {
    tls_aes(c, "tls_aes128gcm", &aead::AES_128_GCM);
    tls_aes(c, "tls_aes256gcm", &aead::AES_256_GCM);

    noise(c, "noise_chachapoly", CipherChoice::ChaChaPoly);
    noise(c, "noise_aesgcm", CipherChoice::AESGCM);

    let mut xsalsa = XSalsa20::new(&[3; 32].into(), &[9; 24].into());
    let mut buf = vec![0x5a; FRAME];
    let mut group = c.benchmark_group("cipher/pnet_xsalsa20");
    group.throughput(Throughput::Bytes(FRAME as u64));
    group.bench_function("apply_64k", |b| b.iter(|| xsalsa.apply_keystream(black_box(&mut buf))));
    group.finish();
}

criterion_group!(benches, ciphers);
criterion_main!(benches);
