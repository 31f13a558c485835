"""What every layer shares, below the data model: the error a user can fix (`errors`), guarded
reads and atomic writes of files (`files`), text safe to print (`printable`), lazy re-exports
(`lazy`) and third-party plug-ins by entry point (`plugins`). Imports nothing else of the project."""
