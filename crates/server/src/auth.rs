//! Identity: who a connection is, and which rooms it may use.
//!
//! Auth is off unless a JWT key is configured; then every connection must
//! present a valid token (header, `?token=`, or the first `hello`). The
//! token's `sub` is the user id; `exp`/`nbf` are enforced with a small
//! leeway; an optional `rooms` claim (patterns like `team-*`) limits `join`
//! and `publish`.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{
    decode, decode_header, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use switchboard_protocol::validate_user;

/// What a connection proved about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Display name from the token, if any.
    pub name: Option<String>,
    /// Room patterns the user may join and publish to; `None`: any room.
    pub rooms: Option<Vec<String>>,
    /// When the token expires (seconds since the epoch).
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An identity the client named itself (auth off).
    pub fn named(user: &str) -> Identity {
        Identity {
            user: user.to_string(),
            name: None,
            rooms: None,
            expires_at: None,
        }
    }

    /// Whether the token allows `room`.
    pub fn may_use(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| room_matches(p, room)),
        }
    }
}

/// `*` matches anything, `team-*` any room starting with `team-`, anything
/// else exactly.
pub fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Decides who a connection is, from what the client presented.
pub trait Authenticator: Send + Sync {
    /// Whether a token is required (auth on).
    fn required(&self) -> bool;

    /// `Ok(Some(identity))`: identified; `Ok(None)`: a guest (auth off, no
    /// user given); `Err(message)`: refused (`unauthorized`, close 4001).
    fn authenticate(
        &self,
        user: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<Identity>, String>;
}

/// Trusts the user id the client names (local development default).
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn required(&self) -> bool {
        false
    }

    fn authenticate(
        &self,
        user: Option<&str>,
        _token: Option<&str>,
    ) -> Result<Option<Identity>, String> {
        Ok(user.map(Identity::named))
    }
}

/// The claims Switchboard reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// Verifies JWTs with an HS256 secret, a PEM public key (RS256 or ES256)
/// and/or a JWKS file. The token header's `alg` picks the key family, and
/// each key is only ever used with its own algorithm (no `none`, no HS256
/// with a public key).
pub struct JwtAuth {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
    jwks: Option<JwkSet>,
    leeway: u64,
}

impl JwtAuth {
    pub fn new(
        secret: Option<&str>,
        public_key: Option<&Path>,
        jwks: Option<&Path>,
        leeway: Duration,
    ) -> Result<JwtAuth, String> {
        let public = match public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                    .map_err(|e| {
                        format!(
                            "{}: not an RSA or EC P-256 public key in PEM: {e}",
                            path.display()
                        )
                    })?;
                Some(key)
            }
        };
        let jwks = match jwks {
            None => None,
            Some(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Some(
                    serde_json::from_slice::<JwkSet>(&text)
                        .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?,
                )
            }
        };
        if secret.is_some_and(str::is_empty) {
            return Err("the JWT secret must not be empty".into());
        }
        Ok(JwtAuth {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            jwks,
            leeway: leeway.as_secs(),
        })
    }

    /// Verifies a token and returns its identity.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let header = decode_header(token).map_err(|_| "malformed token".to_string())?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (
                self.secret
                    .as_ref()
                    .ok_or("HS256 tokens are not accepted")?,
                Algorithm::HS256,
            ),
            Algorithm::RS256 | Algorithm::ES256 => {
                let from_jwks = match (&self.jwks, &header.kid) {
                    (Some(set), Some(kid)) => match set.find(kid) {
                        Some(jwk) => Some(
                            DecodingKey::from_jwk(jwk)
                                .map_err(|e| format!("bad JWKS key `{kid}`: {e}"))?,
                        ),
                        None => return Err(format!("unknown key id `{kid}`")),
                    },
                    _ => None,
                };
                match from_jwks {
                    Some(key) => return self.check(token, &key, header.alg),
                    None => match &self.public {
                        Some((key, alg)) if *alg == header.alg => (key, *alg),
                        _ => return Err(format!("{:?} tokens are not accepted", header.alg)),
                    },
                }
            }
            other => return Err(format!("{other:?} tokens are not accepted")),
        };
        self.check(token, key, alg)
    }

    fn check(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Identity, String> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                "token not valid yet (nbf)".to_string()
            }
            jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad token signature".to_string(),
            _ => format!("invalid token: {e}"),
        })?;
        let claims = data.claims;
        validate_user(&claims.sub).map_err(|m| format!("token sub: {m}"))?;
        Ok(Identity {
            user: claims.sub,
            name: claims.name,
            rooms: claims.rooms,
            expires_at: Some(claims.exp),
        })
    }
}

impl Authenticator for JwtAuth {
    fn required(&self) -> bool {
        true
    }

    fn authenticate(
        &self,
        _user: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<Identity>, String> {
        match token {
            Some(token) => self.verify(token).map(Some),
            None => Err("a token is required".into()),
        }
    }
}

/// Mints an HS256 token (`switchboard token`, tests).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            nbf: None,
            name: Some("Ann".into()),
            rooms: Some(vec!["team-*".into()]),
        }
    }

    #[test]
    fn room_patterns() {
        assert!(room_matches("*", "anything"));
        assert!(room_matches("team-*", "team-red"));
        assert!(!room_matches("team-*", "teams"));
        assert!(room_matches("lobby", "lobby"));
        assert!(!room_matches("lobby", "lobby2"));
    }

    #[test]
    fn hs256_round_trip_and_failures() {
        let auth = JwtAuth::new(Some("s3cret"), None, None, Duration::from_secs(5)).unwrap();
        let token = mint("s3cret", &claims("ann", now() + 60)).unwrap();
        let id = auth.verify(&token).unwrap();
        assert_eq!(id.user, "ann");
        assert_eq!(id.name.as_deref(), Some("Ann"));
        assert!(id.may_use("team-a") && !id.may_use("lobby"));

        let wrong = mint("other", &claims("ann", now() + 60)).unwrap();
        assert_eq!(auth.verify(&wrong).unwrap_err(), "bad token signature");
        let expired = mint("s3cret", &claims("ann", now() - 60)).unwrap();
        assert_eq!(auth.verify(&expired).unwrap_err(), "token expired");
        // Within the leeway is still fine.
        let just = mint("s3cret", &claims("ann", now() - 2)).unwrap();
        assert!(auth.verify(&just).is_ok());
        let mut early = claims("ann", now() + 600);
        early.nbf = Some(now() + 300);
        let early = mint("s3cret", &early).unwrap();
        assert!(auth.verify(&early).unwrap_err().contains("nbf"));
        assert_eq!(auth.verify("not.a.token").unwrap_err(), "malformed token");
        let bad_sub = mint("s3cret", &claims("", now() + 60)).unwrap();
        assert!(auth.verify(&bad_sub).unwrap_err().contains("sub"));
    }

    #[test]
    fn public_key_only_server_rejects_hs256() {
        // A server with only a public key must not accept HS256 tokens
        // (the classic algorithm-confusion attack).
        let auth = JwtAuth {
            secret: None,
            public: None,
            jwks: None,
            leeway: 0,
        };
        let token = mint("whatever", &claims("ann", now() + 60)).unwrap();
        assert!(auth.verify(&token).unwrap_err().contains("not accepted"));
    }
}
