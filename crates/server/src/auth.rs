//! Identity. Auth is off in this build: the user id comes from `?user=` or
//! `hello`. JWT verification plugs in behind [`Authenticator`] without the
//! gateway changing.

/// Decides who a connection is, from what the client presented.
pub trait Authenticator: Send + Sync {
    /// `Ok(Some(user))`: identified; `Ok(None)`: a guest; `Err(message)`:
    /// refused (`unauthorized`).
    fn authenticate(
        &self,
        user: Option<&str>,
        token: Option<&str>,
    ) -> Result<Option<String>, String>;
}

/// Trusts the user id the client names (local development default).
pub struct NoAuth;

impl Authenticator for NoAuth {
    fn authenticate(
        &self,
        user: Option<&str>,
        _token: Option<&str>,
    ) -> Result<Option<String>, String> {
        Ok(user.map(str::to_owned))
    }
}
