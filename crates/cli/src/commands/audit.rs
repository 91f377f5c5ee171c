//! `sluice audit`.

use sluice_audit::VerifyError;

use super::Failure;
use crate::args::AuditCommand;

pub fn run(command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::Verify { path } => match sluice_audit::verify(&path) {
            Ok(report) => {
                println!("{report}");
                // The chain cannot show its newest records removed or edited: this is what to keep elsewhere.
                if let (Some(seq), Some(hash)) = (report.last_seq, &report.last_hash) {
                    println!("last record: seq {seq}, sha256 {hash}");
                }
                Ok(())
            }
            Err(e @ VerifyError::Broken { .. }) => Err(Failure::BrokenChain(e.to_string())),
            Err(e) => Err(Failure::Runtime(e.into())),
        },
    }
}
