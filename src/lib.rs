//! causeway: a reverse proxy whose every 502 and 504 is accurate, and whose log says why.
