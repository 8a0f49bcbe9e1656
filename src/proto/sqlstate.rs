//! SQLSTATE codes the pooler itself reports (PostgreSQL's errcodes.txt).

pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const CONNECTION_FAILURE: &str = "08006";
pub const SQLCLIENT_UNABLE_TO_ESTABLISH: &str = "08001";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const INVALID_AUTHORIZATION: &str = "28000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
pub const INVALID_CATALOG_NAME: &str = "3D000";
pub const INTERNAL_ERROR: &str = "XX000";
pub const UNDEFINED_PSTATEMENT: &str = "26000";
pub const IN_FAILED_TRANSACTION: &str = "25P02";
pub const DUPLICATE_PSTATEMENT: &str = "42P05";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const CONFIG_FILE_ERROR: &str = "F0000";
