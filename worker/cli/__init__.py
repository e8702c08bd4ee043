"""The ``byok`` command: ``main`` builds the parser from one module per verb group."""
