"""client_credentials grant service process."""
from services import grant_process
from services.client_credentials.grant import ClientCredentialsGrant

if __name__ == "__main__":
    grant_process.run("client_credentials", 50061, lambda deps: ClientCredentialsGrant(deps.clients, deps.issuer))
