//! JSON Web Tokens signed with an issuer's public keys (JWS compact form), verified with
//! `ring`. Only asymmetric algorithms exist here: `none` and the HMAC family are refused by
//! name, so a token can never be "verified" with a public key used as a shared secret
//! (algorithm confusion). A key verifies only the algorithms of its own type and curve.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

/// Longest token accepted, in bytes (real ones are 1–4 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused; `code()` is the stable error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0:?} is not accepted (only RS*, PS*, ES256, ES384 and EdDSA)")]
    UnsupportedAlgorithm(String),
    #[error("the token's issuer {0:?} is not configured")]
    UnknownIssuer(String),
    #[error("no key of the issuer matches the token (kid {0:?})")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted here")]
    WrongAudience,
    #[error("the token lacks a valid claim: {0}")]
    BadClaim(String),
    #[error("the issuer's keys could not be fetched: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) | TokenError::BadSignature | TokenError::BadClaim(_) => "invalid_token",
            TokenError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            TokenError::UnknownIssuer(_) => "unknown_issuer",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::KeysUnavailable(_) => "issuer_unavailable",
        }
    }
}

/// A signature algorithm this crate verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Result<Self, TokenError> {
        Ok(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            other => return Err(TokenError::UnsupportedAlgorithm(other.chars().take(32).collect())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A public key from a JWKS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`0x04 || x || y`) on P-256 (`p256: true`) or P-384.
    Ec {
        p256: bool,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The algorithm the key is pinned to, if the JWKS says.
    pub alg: Option<String>,
    pub key: PublicKey,
}

impl Jwk {
    /// Whether this key may verify `alg`: its type (and curve) must be the algorithm's, and a
    /// key pinned to an algorithm verifies only that one.
    pub fn fits(&self, alg: Alg) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg.as_str()) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (PublicKey::Rsa { .. }, Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512)
                | (PublicKey::Ec { p256: true, .. }, Alg::Es256)
                | (PublicKey::Ec { p256: false, .. }, Alg::Es384)
                | (PublicKey::Ed25519(_), Alg::EdDsa)
        )
    }

    /// Verifies `signature` over `message`; false for a key that does not fit `alg`.
    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, sig).is_ok()
            }
            PublicKey::Ec { p256, point } => {
                let algorithm =
                    if *p256 { &signature::ECDSA_P256_SHA256_FIXED } else { &signature::ECDSA_P384_SHA384_FIXED };
                UnparsedPublicKey::new(algorithm, point).verify(message, sig).is_ok()
            }
            PublicKey::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig).is_ok(),
        }
    }
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|e| format!("`{field}` is not base64url: {e}"))
}

/// The keys of a JWKS document that can verify signatures. Keys for encryption (`use: enc`),
/// of other types, or malformed are skipped (and counted in the second value).
pub fn parse_jwks(doc: &Value) -> Result<(Vec<Jwk>, usize), String> {
    let keys = doc["keys"].as_array().ok_or("a JWKS needs a `keys` array")?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for k in keys {
        match parse_jwk(k) {
            Ok(Some(jwk)) => out.push(jwk),
            Ok(None) | Err(_) => skipped += 1,
        }
    }
    Ok((out, skipped))
}

fn parse_jwk(k: &Value) -> Result<Option<Jwk>, String> {
    if k["use"].as_str().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let field = |name: &str| k[name].as_str().ok_or_else(|| format!("missing `{name}`")).and_then(|v| b64(name, v));
    let key = match (k["kty"].as_str(), k["crv"].as_str()) {
        (Some("RSA"), _) => PublicKey::Rsa { n: field("n")?, e: field("e")? },
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (field("x")?, field("y")?);
            let len = if crv == "P-256" { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates must be {len} bytes"));
            }
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            PublicKey::Ec { p256: crv == "P-256", point }
        }
        (Some("OKP"), Some("Ed25519")) => PublicKey::Ed25519(field("x")?),
        _ => return Ok(None),
    };
    Ok(Some(Jwk { kid: k["kid"].as_str().map(str::to_owned), alg: k["alg"].as_str().map(str::to_owned), key }))
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    /// Splits a compact JWS and decodes its header and claims. Refuses, before any key is
    /// looked at: oversized tokens, `alg` outside the accepted list, `crit` headers (no
    /// extension is understood), nested tokens.
    pub fn parse(token: &'a str) -> Result<Self, TokenError> {
        let bad = |m: &str| TokenError::Malformed(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad("longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(bad("a token is three base64url parts separated by dots"));
        };
        let header: Map<String, Value> = serde_json::from_slice(&b64("header", h).map_err(TokenError::Malformed)?)
            .map_err(|_| bad("the header is not a JSON object"))?;
        let alg = Alg::parse(header.get("alg").and_then(Value::as_str).unwrap_or("none"))?;
        if header.contains_key("crit") {
            return Err(bad("critical header extensions are not supported"));
        }
        if header.get("cty").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
            return Err(bad("nested tokens are not supported"));
        }
        let claims: Map<String, Value> = serde_json::from_slice(&b64("claims", c).map_err(TokenError::Malformed)?)
            .map_err(|_| bad("the claims are not a JSON object"))?;
        let signature = b64("signature", s).map_err(TokenError::Malformed)?;
        Ok(Self {
            alg,
            kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
            claims,
            signing_input: &token[..h.len() + 1 + c.len()],
            signature,
        })
    }

    pub fn verify_with(&self, key: &Jwk) -> bool {
        key.verify(self.alg, self.signing_input.as_bytes(), &self.signature)
    }
}

/// What the claims of a verified token must say.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    /// Seconds since the epoch.
    pub now: u64,
    pub leeway_secs: u64,
}

/// Checks `iss`, `aud`, `exp` (required), `nbf` and `iat`, and that `sub` is a non-empty string.
pub fn check_claims(claims: &Map<String, Value>, expect: &Expect<'_>) -> Result<(), TokenError> {
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(TokenError::UnknownIssuer(claims.get("iss").and_then(Value::as_str).unwrap_or("").to_owned()));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => expect.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|a| expect.audiences.iter().any(|x| x == a))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(TokenError::WrongAudience);
    }
    let time = |name: &str| -> Result<Option<u64>, TokenError> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or_else(|| TokenError::BadClaim(format!("`{name}` must be a number of seconds"))),
        }
    };
    let exp = time("exp")?.ok_or_else(|| TokenError::BadClaim("`exp` is required".into()))?;
    if expect.now >= exp.saturating_add(expect.leeway_secs) {
        return Err(TokenError::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = time(name)?
            && t > expect.now.saturating_add(expect.leeway_secs)
        {
            return Err(TokenError::NotYetValid);
        }
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 255 => Ok(()),
        _ => Err(TokenError::BadClaim("`sub` must be a string of 1 to 255 bytes".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn es256() -> (EcdsaKeyPair, Jwk) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = Jwk { kid: Some("k1".into()), alg: None, key: PublicKey::Ec { p256: true, point } };
        (pair, jwk)
    }

    fn sign_es256(pair: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn expect(now: u64) -> Expect<'static> {
        static AUD: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        Expect {
            issuer: "https://id.example",
            audiences: AUD.get_or_init(|| vec!["stead".into()]),
            now,
            leeway_secs: 60,
        }
    }

    fn claims(now: u64) -> Value {
        json!({"iss": "https://id.example", "aud": "stead", "sub": "alice", "exp": now + 600, "iat": now})
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let (pair, jwk) = es256();
        let now = 1_800_000_000;
        let token = sign_es256(&pair, &json!({"alg": "ES256", "kid": "k1"}), &claims(now));
        let t = Unverified::parse(&token).unwrap();
        assert_eq!((t.alg, t.kid.as_deref()), (Alg::Es256, Some("k1")));
        assert!(t.verify_with(&jwk));
        check_claims(&t.claims, &expect(now)).unwrap();
        // Another subject under the same signature.
        let (h, _) = token.split_once('.').unwrap();
        let sig = token.rsplit('.').next().unwrap();
        let mut other = claims(now);
        other["sub"] = json!("mallory");
        let forged = format!("{h}.{}.{sig}", enc(&other));
        assert!(!Unverified::parse(&forged).unwrap().verify_with(&jwk));
        // Another key of the same type.
        let (_, stranger) = es256();
        assert!(!t.verify_with(&stranger));
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key() {
        for alg in ["none", "HS256", "HS512", "nOnE", ""] {
            let token = format!("{}.{}.", enc(&json!({"alg": alg})), enc(&claims(0)));
            assert_eq!(Unverified::parse(&token).unwrap_err().code(), "unsupported_algorithm", "{alg}");
        }
        let no_alg = format!("{}.{}.x", enc(&json!({"typ": "JWT"})), enc(&claims(0)));
        assert_eq!(Unverified::parse(&no_alg).unwrap_err().code(), "unsupported_algorithm");
    }

    #[test]
    fn keys_only_verify_their_own_algorithms() {
        let (pair, jwk) = es256();
        let token = sign_es256(&pair, &json!({"alg": "ES256"}), &claims(0));
        // The same signature presented as another algorithm never reaches a verifier that fits.
        let relabelled = token.replacen(&enc(&json!({"alg": "ES256"})), &enc(&json!({"alg": "ES384"})), 1);
        assert!(!Unverified::parse(&relabelled).unwrap().verify_with(&jwk));
        let rsa = Jwk { kid: None, alg: None, key: PublicKey::Rsa { n: vec![1; 256], e: vec![1, 0, 1] } };
        assert!(!rsa.fits(Alg::Es256) && rsa.fits(Alg::Ps256));
        let pinned = Jwk { alg: Some("ES384".into()), ..jwk.clone() };
        assert!(!Unverified::parse(&token).unwrap().verify_with(&pinned), "a key pinned to another alg");
        let ed =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap().as_ref()).unwrap();
        let ed_jwk = Jwk { kid: None, alg: None, key: PublicKey::Ed25519(ed.public_key().as_ref().to_vec()) };
        let input = format!("{}.{}", enc(&json!({"alg": "EdDSA"})), enc(&claims(0)));
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(ed.sign(input.as_bytes()).as_ref()));
        assert!(Unverified::parse(&token).unwrap().verify_with(&ed_jwk));
        assert!(!Unverified::parse(&token).unwrap().verify_with(&jwk));
    }

    #[test]
    fn claims_are_checked() {
        let now = 1_800_000_000;
        let check = |c: Value| check_claims(c.as_object().unwrap(), &expect(now)).map_err(|e| e.code());
        assert_eq!(check(claims(now)), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = claims(now);
            c[k] = v;
            c
        };
        assert_eq!(check(with("iss", json!("https://evil.example"))), Err("unknown_issuer"));
        assert_eq!(check(with("aud", json!("other"))), Err("wrong_audience"));
        assert_eq!(check(with("aud", json!(["other", "stead"]))), Ok(()));
        assert_eq!(check(with("aud", json!([]))), Err("wrong_audience"));
        assert_eq!(check(with("exp", json!(now - 61))), Err("token_expired"));
        assert_eq!(check(with("exp", json!(now - 30))), Ok(()), "within the leeway");
        assert_eq!(check(with("exp", json!("tomorrow"))), Err("invalid_token"));
        assert_eq!(check(with("nbf", json!(now + 120))), Err("token_not_yet_valid"));
        assert_eq!(check(with("iat", json!(now + 120))), Err("token_not_yet_valid"));
        assert_eq!(check(with("sub", json!(""))), Err("invalid_token"));
        assert_eq!(check(with("sub", json!(7))), Err("invalid_token"));
        let mut no_exp = claims(now);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(no_exp), Err("invalid_token"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for t in ["", "a", "a.b", "a.b.c.d", "!!.??.**", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(Unverified::parse(t).is_err(), "{t:.20}");
        }
        let crit = format!("{}.{}.", enc(&json!({"alg": "ES256", "crit": ["exp"]})), enc(&claims(0)));
        assert_eq!(Unverified::parse(&crit).unwrap_err().code(), "invalid_token");
    }

    #[test]
    fn jwks_keep_signing_keys_only() {
        let (_, jwk) = es256();
        let PublicKey::Ec { point, .. } = &jwk.key else { unreachable!() };
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "a", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "r", "alg": "RS256", "n": "AQAB", "e": "AQAB"}
        ]});
        let (keys, skipped) = parse_jwks(&doc).unwrap();
        assert_eq!(skipped, 3);
        assert_eq!(keys[0].key, jwk.key);
        assert_eq!(keys[1].kid.as_deref(), Some("r"));
        assert!(parse_jwks(&json!({"nokeys": 1})).is_err());
    }
}
