from services.campaigns.server import main

main()
