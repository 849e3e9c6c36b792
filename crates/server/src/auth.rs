//! Identity: who a connection is, and which rooms it may use.
//!
//! Auth is off unless a JWT key is configured; then every connection must
//! present a valid token (header, `?token=`, or the first `hello`). The
//! token's `sub` is the user id; `exp`/`nbf` are enforced with a small
//! leeway; an optional `rooms` claim (patterns like `team-*`) limits `join`
//! and `publish`.

use std::path::{Path, PathBuf};
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
        may_use(self.rooms.as_deref(), room)
    }
}

/// Whether a room grant (an [`Identity`]'s `rooms`) allows `room`.
pub fn may_use(rooms: Option<&[String]>, room: &str) -> bool {
    match rooms {
        None => true,
        Some(patterns) => patterns.iter().any(|p| room_matches(p, room)),
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

/// Why a token was refused. The text goes to the client in the
/// `unauthorized` error, so it is part of the observable protocol.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("malformed token")]
    Malformed,
    /// No key of this server verifies tokens signed with this algorithm.
    #[error("{0:?} tokens are not accepted")]
    AlgorithmNotAccepted(Algorithm),
    #[error("unknown key id `{0}`")]
    UnknownKeyId(String),
    /// The JWKS entry the token names cannot be used as a key.
    #[error("bad JWKS key `{kid}`: {error}")]
    BadJwksKey {
        kid: String,
        error: jsonwebtoken::errors::Error,
    },
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("bad token signature")]
    BadSignature,
    /// Any other failed check (a claim missing or of the wrong type, ...).
    #[error("invalid token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// The `sub` claim is not a valid user id.
    #[error("token sub: {0}")]
    BadSubject(String),
}

/// Why the JWT keys could not be set up (a start-up error).
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not an RSA or EC P-256 public key in PEM: {error}", path.display())]
    NotAPublicKey {
        path: PathBuf,
        error: jsonwebtoken::errors::Error,
    },
    #[error("{}: not a JWKS: {error}", path.display())]
    NotAJwks {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("the JWT secret must not be empty")]
    EmptySecret,
}

/// Why a token could not be signed (`switchboard token`).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MintError(#[from] jsonwebtoken::errors::Error);

/// Decides who a connection is, from what the client presented.
pub trait Authenticator: Send + Sync {
    /// Whether a token is required (auth on).
    fn required(&self) -> bool;

    /// `Ok(Some(identity))`: identified; `Ok(None)`: a guest (auth off, no
    /// user given); `Err(why)`: refused (`unauthorized`, close 4001).
    fn authenticate(
        &self,
        user: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<Identity>, AuthError>;
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
    ) -> Result<Option<Identity>, AuthError> {
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
    ) -> Result<JwtAuth, JwtConfigError> {
        let public = match public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|error| JwtConfigError::Unreadable {
                    path: path.to_owned(),
                    error,
                })?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                    .map_err(|error| JwtConfigError::NotAPublicKey {
                        path: path.to_owned(),
                        error,
                    })?;
                Some(key)
            }
        };
        let jwks = match jwks {
            None => None,
            Some(path) => {
                let text = std::fs::read(path).map_err(|error| JwtConfigError::Unreadable {
                    path: path.to_owned(),
                    error,
                })?;
                Some(serde_json::from_slice::<JwkSet>(&text).map_err(|error| {
                    JwtConfigError::NotAJwks {
                        path: path.to_owned(),
                        error,
                    }
                })?)
            }
        };
        if secret.is_some_and(str::is_empty) {
            return Err(JwtConfigError::EmptySecret);
        }
        Ok(JwtAuth {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            jwks,
            leeway: leeway.as_secs(),
        })
    }

    /// Verifies a token and returns its identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (
                self.secret
                    .as_ref()
                    .ok_or(AuthError::AlgorithmNotAccepted(Algorithm::HS256))?,
                Algorithm::HS256,
            ),
            Algorithm::RS256 | Algorithm::ES256 => {
                let from_jwks = match (&self.jwks, &header.kid) {
                    (Some(set), Some(kid)) => match set.find(kid) {
                        Some(jwk) => Some(DecodingKey::from_jwk(jwk).map_err(|error| {
                            AuthError::BadJwksKey {
                                kid: kid.clone(),
                                error,
                            }
                        })?),
                        None => return Err(AuthError::UnknownKeyId(kid.clone())),
                    },
                    _ => None,
                };
                match from_jwks {
                    Some(key) => return self.check(token, &key, header.alg),
                    None => match &self.public {
                        Some((key, alg)) if *alg == header.alg => (key, *alg),
                        _ => return Err(AuthError::AlgorithmNotAccepted(header.alg)),
                    },
                }
            }
            other => return Err(AuthError::AlgorithmNotAccepted(other)),
        };
        self.check(token, key, alg)
    }

    fn check(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Identity, AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Invalid(e),
        })?;
        let claims = data.claims;
        validate_user(&claims.sub).map_err(AuthError::BadSubject)?;
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
    ) -> Result<Option<Identity>, AuthError> {
        match token {
            Some(token) => self.verify(token).map(Some),
            None => Err(AuthError::Missing),
        }
    }
}

/// Mints an HS256 token (`switchboard token`, tests).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, MintError> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
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
        assert_eq!(
            auth.verify(&wrong).unwrap_err().to_string(),
            "bad token signature"
        );
        let expired = mint("s3cret", &claims("ann", now() - 60)).unwrap();
        assert_eq!(
            auth.verify(&expired).unwrap_err().to_string(),
            "token expired"
        );
        // Within the leeway is still fine.
        let just = mint("s3cret", &claims("ann", now() - 2)).unwrap();
        assert!(auth.verify(&just).is_ok());
        let mut early = claims("ann", now() + 600);
        early.nbf = Some(now() + 300);
        let early = mint("s3cret", &early).unwrap();
        assert!(auth.verify(&early).unwrap_err().to_string().contains("nbf"));
        assert_eq!(
            auth.verify("not.a.token").unwrap_err().to_string(),
            "malformed token"
        );
        let bad_sub = mint("s3cret", &claims("", now() + 60)).unwrap();
        assert!(auth
            .verify(&bad_sub)
            .unwrap_err()
            .to_string()
            .contains("sub"));
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
        assert!(auth
            .verify(&token)
            .unwrap_err()
            .to_string()
            .contains("not accepted"));
    }

    #[test]
    fn refusal_kinds_keep_their_messages() {
        let auth = JwtAuth::new(Some("s3cret"), None, None, Duration::from_secs(5)).unwrap();
        let wrong = mint("other", &claims("ann", now() + 60)).unwrap();
        assert!(matches!(auth.verify(&wrong), Err(AuthError::BadSignature)));
        let expired = mint("s3cret", &claims("ann", now() - 60)).unwrap();
        assert!(matches!(auth.verify(&expired), Err(AuthError::Expired)));
        let mut early = claims("ann", now() + 600);
        early.nbf = Some(now() + 300);
        let early = mint("s3cret", &early).unwrap();
        let refused = auth.verify(&early).unwrap_err();
        assert!(matches!(refused, AuthError::NotYetValid));
        assert_eq!(refused.to_string(), "token not valid yet (nbf)");
        let bad_sub = mint("s3cret", &claims("", now() + 60)).unwrap();
        assert!(matches!(
            auth.verify(&bad_sub),
            Err(AuthError::BadSubject(_))
        ));
        assert_eq!(
            auth.authenticate(None, None).unwrap_err().to_string(),
            "a token is required"
        );
        assert_eq!(
            AuthError::AlgorithmNotAccepted(Algorithm::HS256).to_string(),
            "HS256 tokens are not accepted"
        );
        assert_eq!(
            AuthError::UnknownKeyId("k1".into()).to_string(),
            "unknown key id `k1`"
        );
    }

    #[test]
    fn key_configuration_errors_name_the_file() {
        let empty = JwtAuth::new(Some(""), None, None, Duration::ZERO);
        assert_eq!(
            empty.err().map(|e| e.to_string()).as_deref(),
            Some("the JWT secret must not be empty")
        );
        let missing = Path::new("/nonexistent/switchboard-key.pem");
        match JwtAuth::new(None, Some(missing), None, Duration::ZERO) {
            Err(e @ JwtConfigError::Unreadable { .. }) => assert!(e
                .to_string()
                .starts_with("cannot read /nonexistent/switchboard-key.pem: ")),
            Err(other) => panic!("expected Unreadable, got {other:?}"),
            Ok(_) => panic!("loaded a missing key file"),
        }
    }
}
