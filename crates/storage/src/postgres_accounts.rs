//! [`AccountStore`] in the same PostgreSQL database (and pool) as [`PgMetadata`]: the same
//! tables and statements as [`crate::sqlite_accounts`], with PostgreSQL types (`BOOLEAN`,
//! `BIGINT`, an identity column for audit ids) and the "C" collation for byte-wise name
//! order. Duplicate names are detected by the primary key (one statement, no
//! read-then-write race between replicas), missing parents by foreign keys.

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::{Postgres, QueryBuilder};

use crate::accounts::{
    AccountStore, AuditEvent, AuditFilter, ConsoleSession, Member, Project, ProjectRole,
    RefreshToken, Robot, User,
};
use crate::postgres::{PgMetadata, to_u64};
use crate::sqlite::now;
use crate::{StorageError, StorageResult};

/// The constraint a failed statement violated, if that is why it failed.
fn violation(e: &sqlx::Error) -> Option<ErrorKind> {
    e.as_database_error().map(|d| d.kind())
}

/// The outcome of an INSERT whose primary key may already be taken: `AlreadyExists(what)`.
fn inserted<T>(result: Result<T, sqlx::Error>, what: impl FnOnce() -> String) -> StorageResult<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if violation(&e) == Some(ErrorKind::UniqueViolation) => {
            Err(StorageError::AlreadyExists(what()))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_role(s: &str) -> StorageResult<ProjectRole> {
    s.parse()
        .map_err(|e| StorageError::Database(format!("invalid role in database: {e}")))
}

type ProjectRow = (String, bool, String, i64);
type UserRow = (String, String, bool, i64, bool);
type RobotRow = (String, String, String, bool, Option<i64>, bool, i64, String);
type AuditRow = (i64, i64, String, String, String, String, String);

fn project((name, public, description, created_at): ProjectRow) -> Project {
    Project {
        name,
        public,
        description,
        created_at,
    }
}

fn user((name, password_hash, admin, created_at, disabled): UserRow) -> User {
    User {
        name,
        password_hash,
        admin,
        created_at,
        disabled,
    }
}

fn robot(
    (project, name, secret_hash, can_push, expires_at, revoked, created_at, description): RobotRow,
) -> Robot {
    Robot {
        project,
        name,
        secret_hash,
        can_push,
        expires_at,
        revoked,
        created_at,
        description,
    }
}

impl PgMetadata {
    async fn project_exists(&self, name: &str) -> StorageResult<bool> {
        Ok(
            sqlx::query_scalar::<_, bool>("SELECT EXISTS(SELECT 1 FROM projects WHERE name = $1)")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn user_exists(&self, name: &str) -> StorageResult<bool> {
        Ok(
            sqlx::query_scalar::<_, bool>("SELECT EXISTS(SELECT 1 FROM users WHERE name = $1)")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[async_trait]
impl AccountStore for PgMetadata {
    async fn create_project(&self, p: &Project) -> StorageResult<()> {
        let result = sqlx::query(
            "INSERT INTO projects (name, public, description, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&p.name)
        .bind(p.public)
        .bind(&p.description)
        .bind(p.created_at)
        .execute(&self.pool)
        .await;
        inserted(result, || format!("project {}", p.name))
    }

    async fn project(&self, name: &str) -> StorageResult<Option<Project>> {
        let row = sqlx::query_as::<_, ProjectRow>(
            "SELECT name, public, description, created_at FROM projects WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(project))
    }

    async fn list_projects(&self) -> StorageResult<Vec<Project>> {
        let rows = sqlx::query_as::<_, ProjectRow>(
            "SELECT name, public, description, created_at FROM projects ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(project).collect())
    }

    async fn update_project(
        &self,
        name: &str,
        public: Option<bool>,
        description: Option<String>,
    ) -> StorageResult<()> {
        // PostgreSQL counts every row the WHERE matched, changed or not.
        let updated = sqlx::query(
            "UPDATE projects
             SET public = COALESCE($2, public), description = COALESCE($3, description)
             WHERE name = $1",
        )
        .bind(name)
        .bind(public)
        .bind(description)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StorageError::NotFound(format!("project {name}")));
        }
        Ok(())
    }

    async fn delete_project(&self, name: &str) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        // The robots' tokens first: the cascade below forgets which robots there were.
        sqlx::query(
            "DELETE FROM refresh_tokens
             WHERE subject IN (SELECT name FROM robots WHERE project = $1)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        // Serialize with pushes creating a repository `name/…` on any replica (they take
        // the same lock, shared, before creating one), then delete first and
        // check second. Members and robots go by cascade.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(crate::postgres::project_lock_key(name))
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM projects WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Dropping `tx` rolls back.
            return Err(StorageError::NotFound(format!("project {name}")));
        }
        // Repositories `name/…`: the names in [name + "/", name + "0"), "0" being the
        // character after "/"; a range scan of the primary key.
        let (count, first) = sqlx::query_as::<_, (i64, Option<String>)>(
            "SELECT COUNT(*), MIN(name) FROM repositories
             WHERE name >= $1 || '/' AND name < $1 || '0'",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if count > 0 {
            let first = first.unwrap_or_default();
            let others = match count {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            };
            return Err(StorageError::Conflict(format!(
                "project {name} still has repositories ({first}{others}); delete them first"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_user(&self, u: &User) -> StorageResult<()> {
        let result = sqlx::query(
            "INSERT INTO users (name, password_hash, admin, disabled, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(u.admin)
        .bind(u.disabled)
        .bind(u.created_at)
        .execute(&self.pool)
        .await;
        inserted(result, || format!("user {}", u.name))
    }

    async fn user(&self, name: &str) -> StorageResult<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(
            "SELECT name, password_hash, admin, created_at, disabled FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(user))
    }

    async fn list_users(&self) -> StorageResult<Vec<User>> {
        let rows = sqlx::query_as::<_, UserRow>(
            "SELECT name, password_hash, admin, created_at, disabled FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(user).collect())
    }

    async fn users_page(&self, offset: u64, limit: u32) -> StorageResult<Vec<User>> {
        let rows = sqlx::query_as::<_, UserRow>(
            "SELECT name, password_hash, admin, created_at, disabled FROM users
             ORDER BY name LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(user).collect())
    }

    async fn set_password(&self, name: &str, password_hash: &str) -> StorageResult<()> {
        let updated = sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(password_hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StorageError::NotFound(format!("user {name}")));
        }
        Ok(())
    }

    async fn set_admin(&self, name: &str, admin: bool) -> StorageResult<()> {
        let updated = sqlx::query("UPDATE users SET admin = $2 WHERE name = $1")
            .bind(name)
            .bind(admin)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StorageError::NotFound(format!("user {name}")));
        }
        Ok(())
    }

    async fn delete_user(&self, name: &str) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        // Memberships go by cascade.
        let deleted = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!("user {name}")));
        }
        sqlx::query("DELETE FROM refresh_tokens WHERE subject = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn count_users(&self) -> StorageResult<u64> {
        let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        to_u64(n)
    }

    async fn set_member(&self, project: &str, user: &str, role: ProjectRole) -> StorageResult<()> {
        let result = sqlx::query(
            "INSERT INTO members (project, username, role) VALUES ($1, $2, $3)
             ON CONFLICT (project, username) DO UPDATE SET role = excluded.role",
        )
        .bind(project)
        .bind(user)
        .bind(role.as_str())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if violation(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                // Nothing was written; say which one is missing.
                if !self.project_exists(project).await? {
                    Err(StorageError::NotFound(format!("project {project}")))
                } else if !self.user_exists(user).await? {
                    Err(StorageError::NotFound(format!("user {user}")))
                } else {
                    // Deleted and recreated in between: report the original failure.
                    Err(e.into())
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn remove_member(&self, project: &str, user: &str) -> StorageResult<()> {
        let deleted = sqlx::query("DELETE FROM members WHERE project = $1 AND username = $2")
            .bind(project)
            .bind(user)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!(
                "member {user} of project {project}"
            )));
        }
        Ok(())
    }

    async fn members(&self, project: &str) -> StorageResult<Vec<Member>> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT username, role FROM members WHERE project = $1 ORDER BY username",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(user, role)| {
                Ok(Member {
                    project: project.to_owned(),
                    user,
                    role: parse_role(&role)?,
                })
            })
            .collect()
    }

    async fn role_of(&self, project: &str, user: &str) -> StorageResult<Option<ProjectRole>> {
        let role = sqlx::query_scalar::<_, String>(
            "SELECT role FROM members WHERE project = $1 AND username = $2",
        )
        .bind(project)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        role.as_deref().map(parse_role).transpose()
    }

    async fn projects_of(&self, user: &str) -> StorageResult<Vec<(String, ProjectRole)>> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT project, role FROM members WHERE username = $1 ORDER BY project",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(project, role)| Ok((project, parse_role(&role)?)))
            .collect()
    }

    async fn create_robot(&self, r: &Robot) -> StorageResult<()> {
        let result = sqlx::query(
            "INSERT INTO robots
                 (project, name, secret_hash, can_push, expires_at, revoked, created_at,
                  description)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&r.project)
        .bind(&r.name)
        .bind(&r.secret_hash)
        .bind(r.can_push)
        .bind(r.expires_at)
        .bind(r.revoked)
        .bind(r.created_at)
        .bind(&r.description)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match violation(&e) {
                Some(ErrorKind::UniqueViolation) => {
                    Err(StorageError::AlreadyExists(format!("robot {}", r.name)))
                }
                Some(ErrorKind::ForeignKeyViolation) => {
                    Err(StorageError::NotFound(format!("project {}", r.project)))
                }
                _ => Err(e.into()),
            },
        }
    }

    async fn robot(&self, name: &str) -> StorageResult<Option<Robot>> {
        let row = sqlx::query_as::<_, RobotRow>(
            "SELECT project, name, secret_hash, can_push, expires_at, revoked, created_at,
                    description
             FROM robots WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(robot))
    }

    async fn robots(&self, project: &str) -> StorageResult<Vec<Robot>> {
        let rows = sqlx::query_as::<_, RobotRow>(
            "SELECT project, name, secret_hash, can_push, expires_at, revoked, created_at,
                    description
             FROM robots WHERE project = $1 ORDER BY name",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(robot).collect())
    }

    async fn revoke_robot(&self, name: &str) -> StorageResult<()> {
        let updated = sqlx::query("UPDATE robots SET revoked = TRUE WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StorageError::NotFound(format!("robot {name}")));
        }
        Ok(())
    }

    async fn delete_robot(&self, name: &str) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM robots WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!("robot {name}")));
        }
        sqlx::query("DELETE FROM refresh_tokens WHERE subject = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_refresh_token(&self, t: &RefreshToken) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        // Housekeeping: tokens past their expiry can never be used again.
        sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(now())
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query(
            "INSERT INTO refresh_tokens (id_hash, subject, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&t.id_hash)
        .bind(&t.subject)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await;
        // Never print the hash itself.
        inserted(result, || format!("refresh token of {}", t.subject))?;
        tx.commit().await?;
        Ok(())
    }

    async fn refresh_token(&self, id_hash: &str) -> StorageResult<Option<RefreshToken>> {
        let row = sqlx::query_as::<_, (String, i64)>(
            "SELECT subject, expires_at FROM refresh_tokens WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(subject, expires_at)| RefreshToken {
            id_hash: id_hash.to_owned(),
            subject,
            expires_at,
        }))
    }

    async fn delete_refresh_tokens_of(&self, subject: &str) -> StorageResult<()> {
        sqlx::query("DELETE FROM refresh_tokens WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_session(&self, session: &ConsoleSession) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        // Housekeeping: sessions past their expiry can never be used again.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1")
            .bind(now())
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query(
            "INSERT INTO console_sessions (id_hash, username, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.id_hash)
        .bind(&session.username)
        .bind(session.created_at)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await;
        if let Err(e) = &result
            && violation(e) == Some(ErrorKind::ForeignKeyViolation)
        {
            return Err(StorageError::NotFound(format!("user {}", session.username)));
        }
        // Never print the hash itself.
        inserted(result, || {
            format!("console session of {}", session.username)
        })?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> StorageResult<Option<ConsoleSession>> {
        let row = sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT username, created_at, expires_at FROM console_sessions WHERE id_hash = $1",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(username, created_at, expires_at)| ConsoleSession {
                id_hash: id_hash.to_owned(),
                username,
                created_at,
                expires_at,
            }),
        )
    }

    async fn delete_session(&self, id_hash: &str) -> StorageResult<()> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_sessions_of(&self, username: &str) -> StorageResult<()> {
        sqlx::query("DELETE FROM console_sessions WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn audit(&self, e: &AuditEvent) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, resource, client_addr, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.resource)
        .bind(&e.client_addr)
        .bind(&e.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_events(&self, f: &AuditFilter) -> StorageResult<Vec<AuditEvent>> {
        let limit = f.limit.min(AuditFilter::MAX_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT id, at, actor, action, resource, client_addr, detail FROM audit_events
             WHERE 1 = 1",
        );
        if let Some(actor) = &f.actor {
            q.push(" AND actor = ").push_bind(actor.clone());
        }
        if let Some(action) = &f.action {
            q.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(prefix) = &f.resource_prefix {
            q.push(" AND starts_with(resource, ")
                .push_bind(prefix.clone())
                .push(")");
        }
        if let Some(since) = f.since {
            q.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = f.until {
            q.push(" AND at < ").push_bind(until);
        }
        if let Some(before_id) = f.before_id {
            q.push(" AND id < ").push_bind(before_id);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build_query_as::<AuditRow>().fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, at, actor, action, resource, client_addr, detail)| AuditEvent {
                    id,
                    at,
                    actor,
                    action,
                    resource,
                    client_addr,
                    detail,
                },
            )
            .collect())
    }
}
