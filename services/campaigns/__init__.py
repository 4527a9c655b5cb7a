"""campaigns: business rules over recommendation lists and the offers members are eligible for."""
