//! [`Secret`] lives in the leaf layer (`base::secret`), so that the config
//! can hold secrets too; the providers' code names it here.

pub use crate::base::secret::Secret;
