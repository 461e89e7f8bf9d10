//! Refresh-then-retry for an app's therappai API call: run it with the broker's token and, if
//! therappai answers 401, report the token, take the replacement and retry once. Then stop:
//! a second 401 with a fresh token means the session is gone, and looping cannot fix that.

use crate::{AccessToken, Client, Error};
use std::future::Future;

/// How many times the call runs at most: the first try and one retry with a new token.
pub const MAX_CALL_ATTEMPTS: u32 = 2;

/// What the app's call says about one attempt.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApiAnswer<T> {
    /// The API accepted the token; here is the result.
    Done(T),
    /// The API answered HTTP 401 (the token was refused).
    Unauthorized,
}

/// Why [`Client::call_with_token`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The broker could not give a token (not logged in, unreachable, ...).
    #[error(transparent)]
    Broker(#[from] Error),
    /// The app's call failed for another reason than a refused token.
    #[error("the therappai API call failed: {0}")]
    Api(E),
    /// therappai refused every token, including a fresh one.
    #[error(
        "therappai refused the access token of account \"{account}\" {attempts} times, also right after the broker replaced it; the session was probably revoked. Check `therappai-brokerctl status`, then `therappai-brokerctl login --account {account}`"
    )]
    StillUnauthorized { account: String, attempts: u32 },
}

impl Client {
    /// Runs `call` with an access token for `account`. When `call` answers
    /// [`ApiAnswer::Unauthorized`], the token is reported to the broker (which replaces it,
    /// one refresh however many apps report it) and `call` runs once more with the new token.
    ///
    /// ```no_run
    /// # use therappai_broker_client::{ApiAnswer, Client};
    /// # async fn demo(broker: &mut Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let profile: String = broker
    ///     .call_with_token("default", |token| async move {
    ///         // GET /me with `Authorization: Bearer <token.expose_secret()>` ...
    ///         let status = 200;
    ///         Ok::<_, std::io::Error>(if status == 401 {
    ///             ApiAnswer::Unauthorized
    ///         } else {
    ///             ApiAnswer::Done("profile".to_owned())
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_with_token<T, E, F, Fut>(
        &mut self,
        account: &str,
        mut call: F,
    ) -> Result<T, CallError<E>>
    where
        F: FnMut(AccessToken) -> Fut,
        Fut: Future<Output = Result<ApiAnswer<T>, E>>,
    {
        let mut token = self.access_token(account).await?;
        for attempt in 1..=MAX_CALL_ATTEMPTS {
            let fingerprint = token.fingerprint().to_owned();
            match call(token).await.map_err(CallError::Api)? {
                ApiAnswer::Done(value) => return Ok(value),
                ApiAnswer::Unauthorized if attempt < MAX_CALL_ATTEMPTS => {
                    token = self.report_rejected(account, &fingerprint).await?;
                }
                ApiAnswer::Unauthorized => break,
            }
        }
        Err(CallError::StillUnauthorized {
            account: account.to_owned(),
            attempts: MAX_CALL_ATTEMPTS,
        })
    }
}
