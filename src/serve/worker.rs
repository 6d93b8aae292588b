//! serve's two background threads: the filler, which keeps `--pool` databases ready per
//! finalized template and blank ones for `/new`, and the expiry, which drops what is past its
//! time (handed-out databases after the TTL, pool entries of a serve that died, templates
//! whose client never finalized them), whichever serve made it.

use crate::serve::provision;
use crate::serve::service::{READY_LIFE, RENEW_EVERY, Service};
use crate::serve::store;
use anyhow::Result;
use std::time::{Duration, Instant};

/// How often the filler looks without being woken.
const FILL_EVERY: Duration = Duration::from_millis(500);
/// How often the expiry looks.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);

/// Says on stderr that a round of background work failed, once while it keeps failing (the
/// server may be away for a while; every round tries again).
fn report(round: Result<()>, failing: &mut bool, what: &str) {
    match round {
        Ok(()) => *failing = false,
        Err(err) => {
            if !*failing {
                eprintln!("pgtmp serve: {what}: {err:#}");
            }
            *failing = true;
        }
    }
}

/// The filler's loop, until serve stops.
pub fn fill(service: &Service) {
    let mut renewed = Instant::now();
    let mut failing = false;
    while !service.stopping() {
        report(fill_once(service), &mut failing, "cannot fill the pool");
        if renewed.elapsed() >= RENEW_EVERY {
            let life = READY_LIFE.as_secs_f64();
            let _ = service.db(|c| store::renew(c, &service.maker, life));
            renewed = Instant::now();
        }
        service.wait_for_bell(FILL_EVERY);
    }
}

/// Tops up each stock by one database per round, blank first, until all are full.
fn fill_once(service: &Service) -> Result<()> {
    loop {
        if service.stopping() {
            return Ok(());
        }
        let mut targets = vec![None];
        targets.extend(service.db(ready_templates)?.into_iter().map(Some));
        let mut made = false;
        for target in targets {
            let stocked = service.db(|c| store::stocked(c, target))?;
            if (stocked as usize) < service.settings.pool {
                made |= service.make_one(target)?;
            }
        }
        if !made {
            return Ok(());
        }
    }
}

fn ready_templates(client: &mut postgres::Client) -> Result<Vec<i32>> {
    let rows = client.query(
        "SELECT id FROM pgtmp.serve_templates WHERE state = 'ready' ORDER BY id",
        &[],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The expiry's loop, until serve stops.
pub fn expire(service: &Service) {
    let mut failing = false;
    while !service.stopping() {
        report(
            expire_once(service),
            &mut failing,
            "cannot drop expired databases",
        );
        std::thread::sleep(EXPIRE_EVERY);
    }
}

fn expire_once(service: &Service) -> Result<()> {
    for (id, hash) in service.db(store::stale_templates)? {
        if service.db(|c| store::set_template_state(c, &hash, &["building"], "discarded"))? {
            eprintln!("pgtmp serve: template {hash} was never finalized; discarded");
            service.db(|client| service.drop_template(client, id, false))?;
        }
    }
    loop {
        let names = service.db(|c| store::claim_drops(c, None, 16))?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            service.db(|client| {
                provision::drop_database(client, &name)?;
                store::forget(client, &name)
            })?;
        }
    }
}

/// At serve's stop on a shared server: drops its pool entries nobody got.
pub fn drop_unhanded(service: &Service) -> Result<()> {
    let names = service.db(|c| store::unhanded_of(c, &service.maker))?;
    service.db(|client| service.drop_now(client, &names))
}
