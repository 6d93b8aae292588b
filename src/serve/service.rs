//! What every request and background thread of serve shares: the backend, the settings, the
//! admin connections (reused, one per thread at a time), who this serve is among those that
//! share the server, and the bell that wakes the pool's filler.

use crate::os::secret;
use crate::serve::backend::Backend;
use crate::serve::provision;
use crate::serve::store::{self, Record};
use anyhow::Result;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long a ready database nobody has taken stays recorded as such without its maker
/// renewing it (every [`RENEW_EVERY`]): the pool entries of a serve that died expire after it.
pub const READY_LIFE: Duration = Duration::from_secs(120);
pub const RENEW_EVERY: Duration = Duration::from_secs(30);

/// What `pgtmp serve` was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: std::net::SocketAddr,
    pub server: Option<String>,
    /// Seconds a handed-out database lives.
    pub ttl: u64,
    /// Databases kept ready per template (and blank ones for /new).
    pub pool: usize,
    /// Blank databases (/new) one client may have out at once.
    pub max_per_client: usize,
    pub token: Option<String>,
}

/// Who asks: the client's IP address (faitout's client identity) and the host its databases
/// are reached by.
pub struct Caller {
    pub id: String,
    pub db_host: String,
}

pub struct Service {
    pub backend: Backend,
    pub settings: Settings,
    /// This serve among those sharing the server: its pool entries are its own to drop.
    pub maker: String,
    idle: Mutex<Vec<Client>>,
    bell: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
}

impl Service {
    pub fn new(backend: Backend, settings: Settings) -> Result<Service> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let maker = format!(
            "{host}:{}:{}",
            std::process::id(),
            secret::random_string(b"abcdefghijklmnopqrstuvwxyz0123456789", 8)?
        );
        Ok(Service {
            backend,
            settings,
            maker,
            idle: Mutex::new(Vec::new()),
            bell: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
        })
    }

    pub fn ttl(&self) -> f64 {
        self.settings.ttl as f64
    }

    /// Runs `work` on an admin connection to the admin database: an idle one, or a new one.
    pub fn db<T>(&self, work: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut client = match idle {
            Some(client) if !client.is_closed() => client,
            _ => self.backend.connect(&self.backend.admin_db)?,
        };
        let result = work(&mut client);
        if !client.is_closed()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(client);
        }
        result
    }

    /// Wakes the filler: a database was taken, or a template became ready.
    pub fn ring(&self) {
        let (lock, bell) = &self.bell;
        if let Ok(mut rung) = lock.lock() {
            *rung = true;
            bell.notify_all();
        }
    }

    /// Waits for the bell at most `limit`.
    pub fn wait_for_bell(&self, limit: Duration) {
        let (lock, bell) = &self.bell;
        if let Ok(rung) = lock.lock() {
            let result = bell.wait_timeout_while(rung, limit, |rung| !*rung);
            if let Ok((mut rung, _)) = result {
                *rung = false;
            }
        }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.ring();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Makes one ready database of `template` (None: blank); for a template only while it is
    /// ready (not being discarded: see `store::with_template_lock`), else false.
    pub fn make_one(&self, template: Option<i32>) -> Result<bool> {
        match template {
            None => self.db(|client| self.make_in(client, None)).map(|()| true),
            Some(id) => self.db(|client| {
                store::with_template_lock(client, id, false, |client| {
                    if !store::template_ready(client, id)? {
                        return Ok(false);
                    }
                    self.make_in(client, Some(id)).map(|()| true)
                })
            }),
        }
    }

    fn make_in(&self, client: &mut Client, template: Option<i32>) -> Result<()> {
        let record = match template {
            None => Record {
                name: provision::blank_name()?,
                password: secret::password()?,
                test_id: None,
            },
            Some(id) => {
                let test_id = store::next_test_id(client, id)?;
                Record {
                    name: format!("{}_{test_id}", store::template_name(id)),
                    password: secret::password()?,
                    test_id: Some(test_id),
                }
            }
        };
        let source = template.map(|id| (id, store::template_name(id)));
        let made = provision::make(
            &self.backend,
            client,
            &record,
            source.as_ref().map(|(id, name)| (*id, name.as_str())),
            &self.maker,
            READY_LIFE.as_secs_f64(),
        );
        if let Err(err) = made {
            // Recorded, so dropped now or by the expiry later.
            let _ = self.drop_now(client, std::slice::from_ref(&record.name));
            return Err(err);
        }
        Ok(())
    }

    /// Hands a database of `template` (None: blank) to `client_id`: a ready one, or one made
    /// now when none is.
    pub fn hand_out(&self, template: Option<i32>, client_id: &str) -> Result<Record> {
        for _ in 0..5 {
            if let Some(record) = self.db(|c| store::take(c, template, client_id, self.ttl()))? {
                self.ring();
                return Ok(record);
            }
            if !self.make_one(template)? {
                anyhow::bail!("the template was discarded meanwhile");
            }
        }
        anyhow::bail!("every database made for this request was taken by another; try again")
    }

    /// Drops `names` (those not claimed by another dropper) and forgets them.
    pub fn drop_now(&self, client: &mut Client, names: &[String]) -> Result<()> {
        let claimed = store::claim_drops(client, Some(names), names.len() as i64)?;
        for name in claimed {
            provision::drop_database(client, &name)?;
            store::forget(client, &name)?;
        }
        Ok(())
    }

    /// Drops template `id` with every database made from it; forgets it unless `tombstone`
    /// (then it stays, discarded, so that its hash answers 410).
    /// The template must already be marked discarded, so that no copy of it is begun anew.
    pub fn drop_template(&self, client: &mut Client, id: i32, tombstone: bool) -> Result<()> {
        store::with_template_lock(client, id, true, |client| {
            let names = store::names_of_template(client, id)?;
            self.drop_now(client, &names)?;
            provision::drop_database(client, &store::template_name(id))?;
            if !tombstone {
                store::forget_template(client, id)?;
            }
            Ok(())
        })
    }
}
