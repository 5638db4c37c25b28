//! `sunset feedback`: what comes back from recipients and their mail systems — bounces,
//! complaints, unsubscribes — received by SMTP on `feedback.smtp_listen` and by HTTP on
//! `feedback.http_listen`, and recorded in the ledger as reports.

mod arf;
mod dsn;
mod inbound;
mod original;
mod report_fields;
#[cfg(test)]
mod samples;
