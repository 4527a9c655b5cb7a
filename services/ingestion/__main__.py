from services.ingestion.server import main

main()
