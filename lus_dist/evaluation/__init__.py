"""Reports (`lus eval`), clip prediction (`lus predict`), paper-shaped tables and figures."""
