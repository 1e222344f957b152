"""authorization_code: the authorize decisions for the browser and the code-for-token exchange (issue "The browser")."""
