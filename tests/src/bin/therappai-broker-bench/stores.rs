//! The cached path with each store behind it. Memory serves a cached token whatever the store
//! (the store is read at start and written on login and rotation only), so an
//! `encrypted-file` broker's cached p50 should be the keyutils broker's. The three targets run
//! interleaved, one round each of floor, keyutils and encrypted-file, so the machine's drift
//! reaches all of them alike. (The `vault` store is measured the same way in fleet.rs.)

use crate::Settings;
use crate::load::{Target, latency, median};
use std::path::Path;
use therappai_broker_e2e::{Broker, BrokerOptions, StoreKind};

#[derive(Debug, serde::Serialize)]
pub struct StoreRow {
    pub store: &'static str,
    pub p50_us: f64,
    pub ratio_to_floor: f64,
}

/// Cached GetAccessToken p50 of the keyutils broker at `keyutils_socket` and of a new
/// encrypted-file broker for the same account, beside the floor at `floor_socket`.
pub async fn cached_by_store(
    floor_socket: &Path,
    keyutils_socket: &Path,
    (base_url, ca_pem): (&str, &str),
    (account, email, password): (&str, &str, &str),
    settings: &Settings,
) -> anyhow::Result<Vec<StoreRow>> {
    let mut options = BrokerOptions::new(StoreKind::EncryptedFile, email);
    options.log_level = "info".to_owned();
    let file_broker = Broker::start(options, base_url, ca_pem);
    file_broker.login(account, password).await;
    file_broker.token(account).await;
    let floor = Target::floor(floor_socket, 1).await?;
    let targets = [
        (
            "keyutils",
            Target::broker(keyutils_socket, account, 1).await?,
        ),
        (
            "encrypted-file",
            Target::broker(file_broker.socket_path(), account, 1).await?,
        ),
    ];
    let (mut floor_p50, mut store_p50) = (Vec::new(), vec![Vec::new(), Vec::new()]);
    for _ in 0..settings.repeats {
        floor_p50.push(latency(&floor, settings.latency_calls).await?.p50_us);
        for (samples, (_, target)) in store_p50.iter_mut().zip(&targets) {
            samples.push(latency(target, settings.latency_calls).await?.p50_us);
        }
    }
    let floor_p50 = median(floor_p50);
    Ok(targets
        .iter()
        .zip(store_p50)
        .map(|((store, _), samples)| {
            let p50_us = median(samples);
            StoreRow {
                store,
                p50_us,
                ratio_to_floor: p50_us / floor_p50,
            }
        })
        .collect())
}
