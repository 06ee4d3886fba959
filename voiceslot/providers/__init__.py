"""Provider adapters behind one interface (``base.Provider``) and its error taxonomy."""
