//! (being built: issue 2/6)
