//! The dos-server binary: local, api, data and setup commands.
