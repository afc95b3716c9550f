//! The web config's `basic_auth_users`: names and bcrypt hashes, checked
//! at load (the request-time check is `api::basic_auth`).

use std::collections::BTreeMap;

use super::*;

impl Builder<'_> {
    pub(super) fn users(&mut self, users: &BTreeMap<String, String>) -> Result<(), WebConfigError> {
        for (user, hash) in users {
            if user.is_empty() || user.contains(':') {
                return Err(self.invalid(
                    "basic_auth_users",
                    format!("user name {user:?}"),
                    "a non-empty name without ':'",
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(self.invalid(
                    &format!("basic_auth_users.{user}"),
                    "not a bcrypt hash",
                    "a bcrypt hash ($2a$, $2b$ or $2y$), e.g. from htpasswd -nBC 10 \"\" or python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"pw\", bcrypt.gensalt()).decode())'",
                ));
            }
            self.loaded.users.insert(user.clone(), hash.clone());
        }
        Ok(())
    }
}
