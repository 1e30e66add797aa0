//! [`crate::ReplicationStore`] for [`PgMetadata`]: migration `0008_replication.sql` and the
//! shared implementation ([`crate::replication::impl_replication_store`]). A scheduled run
//! is started once across replicas by [`crate::ReplicationStore::claim_schedule_slot`], one
//! conditional `UPDATE` (row-locked by PostgreSQL, so exactly one replica sees its row
//! change).

use crate::postgres::PgMetadata;

crate::replication::impl_replication_store!(PgMetadata, sqlx::Postgres, pool, pool);
