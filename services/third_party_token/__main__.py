"""third_party_token process: its row of services/modules.py, run by the shared runner."""
from services import modules

if __name__ == "__main__":
    modules.run("third_party_token")
