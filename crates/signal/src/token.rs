//! Access tokens: HS256 JWTs with LiveKit-shaped grants.
//!
//! ```
//! use signal::token::{Claims, TokenKey, VideoGrant};
//! let key = TokenKey::new("devkey", "secret");
//! let claims = Claims::new("alice", VideoGrant::join("demo"), std::time::Duration::from_secs(3600));
//! let jwt = key.mint(&claims).unwrap();
//! let back = key.verify(&jwt).unwrap();
//! assert_eq!(back.sub, "alice");
//! assert_eq!(back.video.room.as_deref(), Some("demo"));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, bad signature, wrong algorithm, unknown key.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// The token carries no room grant.
    #[error("token has no video.room grant")]
    NoRoom,
}

/// Room grants, named as LiveKit names them (`video` claim).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    /// The only room this token may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// May join `room`.
    #[serde(default)]
    pub room_join: bool,
    /// May send media (absent = true, as in LiveKit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    /// May receive media (absent = true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    /// May send data-channel messages (absent = true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
}

impl VideoGrant {
    /// A grant to join `room` with every permission.
    pub fn join(room: &str) -> VideoGrant {
        VideoGrant {
            room: Some(room.to_owned()),
            room_join: true,
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
        }
    }
}

/// JWT claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer: the API key the token was signed with.
    #[serde(default)]
    pub iss: String,
    /// Participant identity, unique within a room.
    pub sub: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Opaque metadata string copied to the participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Not before (unix seconds).
    #[serde(default)]
    pub nbf: u64,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// Room grants.
    #[serde(default)]
    pub video: VideoGrant,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Claims {
    /// Claims for `identity` with `grant`, valid from now for `ttl`.
    pub fn new(identity: &str, grant: VideoGrant, ttl: Duration) -> Claims {
        let now = unix_now();
        Claims {
            iss: String::new(),
            sub: identity.to_owned(),
            name: None,
            metadata: None,
            nbf: now.saturating_sub(5),
            exp: now + ttl.as_secs(),
            video: grant,
        }
    }
}

/// An API key and its HS256 secret.
#[derive(Clone)]
pub struct TokenKey {
    key: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A key named `key` signing with `secret`.
    pub fn new(key: &str, secret: &str) -> TokenKey {
        TokenKey {
            key: key.to_owned(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// The API key name (the `iss` of tokens it mints).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Sign `claims` (its `iss` is set to this key).
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut claims = claims.clone();
        claims.iss = self.key.clone();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verify signature, algorithm (HS256 only), `exp`, `nbf` and the presence of a room grant.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        if claims.video.room.as_deref().unwrap_or("").is_empty() {
            return Err(TokenError::NoRoom);
        }
        Ok(claims)
    }
}

/// A set of API keys; a token is verified with the key named by its `iss` (or the only key).
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<TokenKey>,
}

impl KeySet {
    /// A key set holding `keys`.
    pub fn new(keys: Vec<TokenKey>) -> KeySet {
        KeySet { keys }
    }

    /// The first key (used to mint dev tokens).
    pub fn first(&self) -> Option<&TokenKey> {
        self.keys.first()
    }

    /// Verify `token` with the key its `iss` names; with one key configured, `iss` is not required to match.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let iss = unverified_issuer(token);
        let key = match (self.keys.len(), iss) {
            (1, _) => self.keys.first(),
            (_, Some(iss)) => self.keys.iter().find(|k| k.key == iss),
            _ => None,
        }
        .ok_or_else(|| TokenError::Invalid("unknown API key".into()))?;
        key.verify(token)
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn minted_token_verifies_and_carries_grants() {
        let key = TokenKey::new("k", "s3cret");
        let mut claims = Claims::new("bob", VideoGrant::join("r1"), Duration::from_secs(60));
        claims.name = Some("Bob".into());
        let jwt = key.mint(&claims).unwrap();
        let got = key.verify(&jwt).unwrap();
        assert_eq!(got.iss, "k");
        assert_eq!(got.name.as_deref(), Some("Bob"));
        assert!(got.video.room_join);
    }

    #[test]
    fn token_signed_with_another_secret_is_refused() {
        let jwt = TokenKey::new("k", "a")
            .mint(&Claims::new(
                "x",
                VideoGrant::join("r"),
                Duration::from_secs(60),
            ))
            .unwrap();
        assert!(matches!(
            TokenKey::new("k", "b").verify(&jwt),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn tampered_claims_with_kept_signature_are_refused() {
        let key = TokenKey::new("k", "a");
        let jwt = key
            .mint(&Claims::new(
                "x",
                VideoGrant::join("r"),
                Duration::from_secs(60),
            ))
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut claims = Claims::new("x", VideoGrant::join("other-room"), Duration::from_secs(60));
        claims.iss = "k".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert!(key.verify(&forged).is_err());
    }

    #[test]
    fn alg_none_token_is_refused() {
        let key = TokenKey::new("k", "a");
        let claims = Claims::new("x", VideoGrant::join("r"), Duration::from_secs(60));
        let forged = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        assert!(key.verify(&forged).is_err());
        assert!(key.verify("not a jwt").is_err());
    }

    #[test]
    fn expired_token_is_refused_as_expired() {
        let key = TokenKey::new("k", "a");
        let mut claims = Claims::new("x", VideoGrant::join("r"), Duration::from_secs(60));
        claims.exp = unix_now() - 3600;
        claims.nbf = 0;
        let jwt = key.mint(&claims).unwrap();
        assert_eq!(key.verify(&jwt), Err(TokenError::Expired));
    }

    #[test]
    fn token_without_room_is_refused() {
        let key = TokenKey::new("k", "a");
        let claims = Claims::new("x", VideoGrant::default(), Duration::from_secs(60));
        let jwt = key.mint(&claims).unwrap();
        assert_eq!(key.verify(&jwt), Err(TokenError::NoRoom));
    }

    #[test]
    fn keyset_picks_key_by_issuer() {
        let a = TokenKey::new("a", "sa");
        let b = TokenKey::new("b", "sb");
        let set = KeySet::new(vec![a.clone(), b.clone()]);
        let claims = Claims::new("x", VideoGrant::join("r"), Duration::from_secs(60));
        assert!(set.verify(&a.mint(&claims).unwrap()).is_ok());
        assert!(set.verify(&b.mint(&claims).unwrap()).is_ok());
        let c = TokenKey::new("c", "sc");
        assert!(set.verify(&c.mint(&claims).unwrap()).is_err());
    }
}
