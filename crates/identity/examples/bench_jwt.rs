//! Token verification cost with the issuer's keys cached: split and decode, verify the
//! signature, check the claims — what `Auth::authenticate` does per request once the JWKS is
//! held. Prints figures, asserts nothing.
//!
//!     cargo run --release -p stead-identity --example bench_jwt

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use stead_identity::jwt::{self, Expect, Jwk, PublicKey, Unverified};

fn segment(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn measure(label: &str, token: &str, key: &Jwk, now: u64) {
    let audiences = vec!["stead".to_owned()];
    let expect = Expect { issuer: "https://id.example", audiences: &audiences, now, leeway_secs: 60 };
    let mut times = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let u = Unverified::parse(token).unwrap();
        assert!(u.verify_with(key));
        jwt::check_claims(&u.claims, &expect).unwrap();
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)] as f64 / 1000.0;
    println!("{label}: p50 {:.1} µs, p99 {:.1} µs over {} verifications", pct(0.50), pct(0.99), times.len());
}

fn main() {
    let rng = SystemRandom::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"iss": "https://id.example", "aud": "stead", "sub": "alice", "exp": now + 600,
        "iat": now, "org": "acme", "roles": ["approver", "reader"]});

    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let input = format!("{}.{}", segment(&serde_json::json!({"alg": "ES256", "kid": "k1"})), segment(&claims));
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(pair.sign(&rng, input.as_bytes()).unwrap().as_ref()));
    let key = Jwk {
        kid: Some("k1".into()),
        alg: None,
        key: PublicKey::Ec { p256: true, point: pair.public_key().as_ref().to_vec() },
    };
    measure("ES256", &token, &key, now);

    // RS256, what most providers sign with: a 2048-bit key made by `openssl`, when there is one.
    let der = std::process::Command::new("sh")
        .args(["-c", "openssl genrsa 2048 2>/dev/null | openssl rsa -traditional -outform DER 2>/dev/null"])
        .output();
    match der {
        Ok(out) if out.status.success() => {
            let rsa = signature::RsaKeyPair::from_der(&out.stdout).unwrap();
            let input = format!("{}.{}", segment(&serde_json::json!({"alg": "RS256", "kid": "r1"})), segment(&claims));
            let mut sig = vec![0; rsa.public().modulus_len()];
            rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            let c: signature::RsaPublicKeyComponents<Vec<u8>> = rsa.public().into();
            let key = Jwk { kid: Some("r1".into()), alg: None, key: PublicKey::Rsa { n: c.n, e: c.e } };
            measure("RS256", &token, &key, now);
        }
        _ => println!("RS256: skipped (no openssl to make a key)"),
    }

    let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let input = format!("{}.{}", segment(&serde_json::json!({"alg": "EdDSA"})), segment(&claims));
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(ed.sign(input.as_bytes()).as_ref()));
    let key = Jwk { kid: None, alg: None, key: PublicKey::Ed25519(ed.public_key().as_ref().to_vec()) };
    measure("EdDSA", &token, &key, now);
}
