//! Limits on room names and user ids.
//!
//! Names are opaque Unicode strings (nicknames are often Chinese) so we only
//! reject what breaks logs, URLs-by-convention and displays: empty names,
//! over-long names, control characters and leading/trailing whitespace.

/// Longest room name, in bytes of UTF-8.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest user id, in bytes of UTF-8.
pub const MAX_USER_LEN: usize = 64;

fn validate(kind: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if value.len() > max {
        return Err(format!("{kind} is longer than {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{kind} must not contain control characters"));
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(format!("{kind} must not start or end with whitespace"));
    }
    Ok(())
}

pub fn validate_room(room: &str) -> Result<(), String> {
    validate("room", room, MAX_ROOM_LEN)
}

pub fn validate_user(user: &str) -> Result<(), String> {
    validate("user", user, MAX_USER_LEN)
}

/// Device ids follow the user id rules.
pub fn validate_device(device: &str) -> Result<(), String> {
    validate("device", device, MAX_USER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_unicode_names() {
        assert!(validate_room("lobby").is_ok());
        assert!(validate_room("team-42/general").is_ok());
        assert!(validate_user("小明").is_ok());
        assert!(validate_user(&"a".repeat(MAX_USER_LEN)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        assert!(validate_room("").is_err());
        assert!(validate_room(&"r".repeat(MAX_ROOM_LEN + 1)).is_err());
        assert!(validate_user(&"u".repeat(MAX_USER_LEN + 1)).is_err());
        assert!(validate_user("a\nb").is_err());
        assert!(validate_user("\u{7f}").is_err());
        assert!(validate_room(" lobby").is_err());
        assert!(validate_room("lobby ").is_err());
    }
}
