//! What the handlers share once a request is decided: the tenant's metric label, and opening an answer's
//! ledger, on the member that served or (for a request no target served) on the backend tried last, so
//! that the request is counted once whatever ended it.

use std::sync::Arc;

use sluice_policy::{Attempt, FleetView};
use tokio::time::Instant;

use super::app::App;
use crate::accounting::{Ledger, Served};
use crate::auth::Tenant;
use crate::backend::Backend;
use crate::dispatch::{FailedTarget, Unserved};
use crate::error::{self, ApiError};

/// The tenant as metrics label it: a configured tenant (or the anonymous one) by name, any other `other`.
pub(super) fn tenant_label(app: &App, tenant: &Tenant) -> String {
    if app.keys.tenants().any(|t| t == &*tenant.0) || &*tenant.0 == crate::auth::ANONYMOUS {
        tenant.0.to_string()
    } else {
        "other".to_owned()
    }
}

/// The targets tried before, as the outcome lists them.
pub(super) fn attempts(failures: &[FailedTarget]) -> Vec<Attempt> {
    failures
        .iter()
        .map(|f| Attempt {
            backend: f.backend.clone(),
            model: f.model.clone(),
            code: ApiError::from(&f.error).code,
        })
        .collect()
}

/// What every ledger of one decided request shares.
pub(super) struct Serving<'a> {
    pub view: &'a FleetView,
    pub tenant_label: &'a str,
    pub decision_id: &'a str,
    pub arrived: Instant,
}

impl<'a> Serving<'a> {
    /// Where an answer is served: `backend` (at `index` in the fleet), its `member`, the `model`.
    pub(super) fn served<'b>(
        &'b self,
        backend: &'b Arc<dyn Backend>,
        member: &'b str,
        model: &'b str,
        index: usize,
    ) -> Served<'b>
    where
        'a: 'b,
    {
        Served {
            backend,
            member,
            model,
            prices: self.view.backends.get(index).and_then(|b| b.prices(model)),
            tenant_label: self.tenant_label,
            decision_id: self.decision_id,
            arrived: self.arrived,
        }
    }

    /// Records a request no target served: the fallbacks, then the request once, on the last backend tried
    /// with the code the client gets (or, when nothing was tried, as refused). Returns the client's error.
    pub(super) fn unserved(
        &self,
        app: &App,
        unserved: &Unserved,
        audit: Option<Box<sluice_audit::Record>>,
        held: Option<crate::limits::Held>,
    ) -> ApiError {
        let accounts = &app.accounts;
        let (error, reason) = error::unserved(unserved);
        let (last, earlier) = unserved.last_and_earlier();
        for f in earlier {
            accounts.fell_back(&f.backend, f.error.member_fault());
        }
        let tried = last.and_then(|l| {
            let index = app.fleet.backends.iter().position(|b| b.name() == l.backend)?;
            Some((l, index))
        });
        match tried {
            Some((last, index)) => {
                if let Some(reason) = reason {
                    accounts.rejected(reason);
                }
                let backend = app.fleet.backends[index].clone();
                let mut ledger = Ledger::new(
                    accounts,
                    &self.served(&backend, &last.backend, &last.model, index),
                    attempts(earlier),
                    audit,
                );
                ledger.hold(held);
                ledger.end(error.status.as_u16(), error.code, last.error.member_fault());
            }
            // Nothing was tried: the record ends here.
            None => {
                accounts.refused(self.decision_id, audit, error.status.as_u16(), error.code, reason);
            }
        }
        error
    }
}
