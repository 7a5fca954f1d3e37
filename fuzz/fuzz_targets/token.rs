//! A connecting client's token: what `auth::Authenticator::verify` does with it (the header
//! read by `jsonwebtoken::decode_header`, the signature checked with the algorithm pinned to
//! the key, then the claims and grants read), with an HS256 test secret.
//!
//! The input is used twice: as a token as it is, and, when it holds a NUL byte, as header JSON
//! and claims JSON (before and after the first NUL) signed with the test secret, so that what
//! follows the signature check (claims, grants) is fuzzed too.
//!
//! Properties: never a panic; a header that decodes has the `alg` it declares; a token is
//! accepted only when its header declares `HS256` (so never `alg: none`, nor another
//! algorithm), and then names a user and is valid now.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use websocket_service::fuzzing::{hs256_verifier, verify, Authenticator};

/// The test secret (the seed corpus's valid token is signed with it).
const SECRET: &str = "fuzzing-secret-0123456789";

static AUTH: LazyLock<Arc<Authenticator>> = LazyLock::new(|| hs256_verifier(SECRET));

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        check(token);
    }
    if let Some(nul) = data.iter().position(|b| *b == 0) {
        let (header, claims) = (&data[..nul], &data[nul + 1..]);
        let message = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HS256 signs any message");
        check(&format!("{message}.{signature}"));
    }
});

fn check(token: &str) {
    let declared = declared_alg(token);
    let header = jsonwebtoken::decode_header(token);
    if let (Ok(header), Some(declared)) = (&header, &declared) {
        let alg = serde_json::to_value(header.alg).expect("an algorithm serialises");
        assert_eq!(alg.as_str(), Some(declared.as_str()), "the header's alg: {token}");
    }
    let now = jsonwebtoken::get_current_timestamp();
    let Ok(identity) = verify(&AUTH, token) else {
        return;
    };
    assert!(
        header.is_ok(),
        "accepted with a header that does not decode: {token}"
    );
    assert_eq!(
        declared.as_deref(),
        Some("HS256"),
        "accepted another algorithm: {token}"
    );
    assert!(!identity.user_id.is_empty(), "accepted without a user: {token}");
    assert!(identity.valid_until >= now, "accepted an expired token: {token}");
}

/// The `alg` the header declares, read on its own: the header is what precedes the last two
/// dots (as `jsonwebtoken` splits), base64url JSON.
fn declared_alg(token: &str) -> Option<String> {
    let mut parts = token.rsplitn(3, '.');
    let (_signature, _claims, header) = (parts.next()?, parts.next()?, parts.next()?);
    let json: serde_json::Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    json.get("alg")?.as_str().map(String::from)
}
